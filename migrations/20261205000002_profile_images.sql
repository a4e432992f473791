-- Profile images that clients encrypted before upload. The command service stores each
-- envelope as it arrived, keyed by the SHA-256 of its bytes, and never holds a key that
-- opens it. The query service serves only the image that rm_profiles names as current, so a
-- row that no stored event names is never served.
CREATE TABLE profile_images
(
    user_id    text        NOT NULL,
    image_id   text        NOT NULL,
    bytes      bytea       NOT NULL,
    media_type text        NOT NULL,
    -- Time of the latest upload of these bytes. A failed upload deletes the row only when
    -- this is still its own timestamp, so it never deletes a row that a concurrent upload of
    -- the same bytes relies on.
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, image_id)
);

-- Metadata of the current encrypted image (`EncryptedImage` as JSON), or null.
ALTER TABLE rm_profiles
    ADD COLUMN encrypted_image jsonb;

-- Erasing a user inserts a row into erased_users in the erasing transaction; this deletes
-- the user's encrypted images in that same transaction.
CREATE FUNCTION meridian_delete_erased_profile_images() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM profile_images WHERE user_id = NEW.user_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER erased_users_delete_profile_images
    AFTER INSERT ON erased_users
    FOR EACH ROW
EXECUTE FUNCTION meridian_delete_erased_profile_images();
