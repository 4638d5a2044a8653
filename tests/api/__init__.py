"""Protocol tests: the OCI Distribution API over real HTTP, on SQLite and PostgreSQL."""
