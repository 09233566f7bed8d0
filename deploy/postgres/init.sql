-- One server, one database per concern: MLflow's backend store, Prefect's database, the source
-- warehouse and the prediction log.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE warehouse;
CREATE DATABASE predictions;
