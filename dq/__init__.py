"""dq: a job queue for Django whose broker is the project's own database."""
