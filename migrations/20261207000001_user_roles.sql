-- The role of each user, which `RoleChanged` events set. Rows of users registered before
-- roles existed take the default, which is the role every user starts with.
ALTER TABLE rm_users
    ADD COLUMN role text NOT NULL DEFAULT 'user'
        CONSTRAINT rm_users_role_valid CHECK (role IN ('user', 'admin', 'analyst'));
