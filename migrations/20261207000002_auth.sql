-- Refresh tokens (issue 5).
--
-- A login starts a family; each refresh marks its token used and adds the next one to the
-- same family. Presenting a used token again means it was stolen or replayed, so the whole
-- family is revoked. Only SHA-256 hashes of the tokens are stored.
CREATE TABLE auth_refresh_families
(
    family_id      uuid PRIMARY KEY,
    user_id        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('logout', 'reuse', 'account_disabled', 'password_changed'))
);

CREATE INDEX auth_refresh_families_user ON auth_refresh_families (user_id);

CREATE TABLE auth_refresh_tokens
(
    token_hash bytea PRIMARY KEY,
    family_id  uuid        NOT NULL REFERENCES auth_refresh_families ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX auth_refresh_tokens_family ON auth_refresh_tokens (family_id);

-- Erasing a user deletes their sessions with everything else of theirs.
CREATE FUNCTION meridian_forget_sessions() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM auth_refresh_families WHERE user_id = NEW.user_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER erased_users_forget_sessions
    AFTER INSERT ON erased_users
    FOR EACH ROW
EXECUTE FUNCTION meridian_forget_sessions();
