# One image for every service of docker-compose.yml; the compose file picks the module to run.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY webhooks ./webhooks
COPY service_common ./service_common
COPY subscription_service ./subscription_service
COPY dispatcher_service ./dispatcher_service
COPY webhook_contracts ./webhook_contracts
COPY webhook_receiver ./webhook_receiver
COPY webhook_wire ./webhook_wire
COPY webhooks_cli ./webhooks_cli
COPY console ./console
COPY contracts ./contracts
# Editable, so the packages find contracts/ beside them as they do in a clone.
RUN pip install --no-cache-dir -e .
# A new named volume takes the owner and mode of the directory it is mounted on: these let
# the services, running as nobody, write the tokens, the signing keys and the console's key.
RUN mkdir -p /var/lib/webhooks/tokens /var/lib/webhooks/signing-keys /var/lib/webhooks/console \
    && chown -R nobody:nogroup /var/lib/webhooks \
    && chmod 700 /var/lib/webhooks/tokens /var/lib/webhooks/signing-keys /var/lib/webhooks/console
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER nobody
CMD ["python", "-m", "subscription_service"]
