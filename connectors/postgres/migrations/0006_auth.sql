-- Rotating refresh tokens (api/security.py). Only the SHA-256 of each opaque token is stored.
-- A login starts a family; every refresh marks its token used and issues a child in the same
-- family. Presenting a used token again revokes the whole family (reuse detection).
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id         BIGSERIAL PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  UUID NOT NULL,
    parent_id  BIGINT REFERENCES refresh_tokens (id) ON DELETE CASCADE,
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,                              -- set when rotated; a second use is reuse
    revoked_at TIMESTAMPTZ                               -- logout or reuse: the whole family
);
CREATE INDEX IF NOT EXISTS idx_refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS idx_refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX IF NOT EXISTS idx_refresh_tokens_expires ON refresh_tokens (expires_at);
