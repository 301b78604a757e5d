# One image for both services; the compose file picks the module to run.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY webhooks ./webhooks
COPY service_common ./service_common
COPY subscription_service ./subscription_service
COPY dispatcher_service ./dispatcher_service
COPY webhook_contracts ./webhook_contracts
COPY webhook_receiver ./webhook_receiver
COPY contracts ./contracts
# Editable, so the packages find contracts/ beside them as they do in a clone.
RUN pip install --no-cache-dir -e .
ENV PYTHONUNBUFFERED=1
USER nobody
CMD ["python", "-m", "subscription_service"]
