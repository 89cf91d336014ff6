-- In a database shared by every service (PostgreSQL), "versions" and "aliases" say too
-- little: the tables take the model_ prefix. Foreign keys follow the rename.
ALTER TABLE versions RENAME TO model_versions;
ALTER TABLE aliases RENAME TO model_aliases;
