# MLflow tracking server image for infra/k8s/mlflow.yaml: mlflow at the version recicl pins
# (constraints.txt) + the PostgreSQL driver (backend store) + boto3 (S3 artifact store).
#
#   docker build -f infra/docker/mlflow.Dockerfile -t recicl/mlflow:3.17.2 .   # from the repo root
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.8" \
    && useradd --create-home --uid 1000 mlflow
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
