-- Erasing a user also deletes the stored results of their idempotent requests. Otherwise a
-- repeated request would replay a success for a user who no longer exists, and the key of a
-- registration (chosen by the client, such as import-user-<MMSI>) would outlive the user.
-- The result of the erase request itself stays, so repeating the erase replays it.
CREATE FUNCTION meridian_delete_erased_idempotency_results() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM idempotency_keys
    WHERE key NOT LIKE 'DELETE %'
      AND (position('/v1/users/' || NEW.user_id in key) > 0
           OR response ->> 'user_id' = NEW.user_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER erased_users_delete_idempotency_results
    AFTER INSERT ON erased_users
    FOR EACH ROW
EXECUTE FUNCTION meridian_delete_erased_idempotency_results();
