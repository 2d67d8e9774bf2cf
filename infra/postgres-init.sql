-- The queue uses the database named by POSTGRES_DB (vae); MLflow gets its own.
CREATE DATABASE mlflow;
