#!/usr/bin/env python3
"""Write Herald notification requests straight to Kafka (docs/producers.md).

Each record is a NotificationRequest in Avro single-object encoding (0xC3 0x01, the schema's
8-byte little-endian CRC-64-AVRO fingerprint, the Avro binary body) on the `{prefix}requests`
topic, keyed by notification id, partitioned like Kafka's Java client (murmur2), with the
schema name, fingerprint and W3C trace context in headers. The producer is idempotent with
acks=all, and the script exits only after every delivery report.

    pip install confluent-kafka fastavro
    python producer.py --brokers 127.0.0.1:9092 --user alice --count 3

Prints one line per accepted record: "accepted <notification_id> <partition> <offset>".
"""
import argparse
import io
import json
import os
import re
import struct
import sys
import time
import uuid

import fastavro
from confluent_kafka import Producer

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_PATH = os.path.join(HERE, "..", "..", "schemas", "avro", "notification_request.avsc")
# Herald derives notification ids as UUIDv5(namespace, "producer\0idempotency_key"): a producer
# retry with the same key is the same notification. Keys of the form Herald generates for
# keyless HTTP requests ("herald:" + a lower-case UUIDv7) get a UUIDv7 id instead, the UUIDv5
# with the key's time in its first six bytes (docs/producers.md). This example's keys never have
# that form; notification_id() computes both.
ID_NAMESPACE = uuid.UUID("5b1f0e8a-3c1d-4f7e-9a53-6e2d8c0f4b21")  # herald_core::ids
GENERATED_KEY = re.compile(r"^herald:[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def notification_id(producer, key):
    v5 = uuid.uuid5(ID_NAMESPACE, f"{producer}\0{key}")
    if not GENERATED_KEY.match(key):
        return str(v5)
    b = bytearray(v5.bytes)
    b[0:6] = uuid.UUID(key[len("herald:"):]).bytes[0:6]
    b[6] = (b[6] & 0x0F) | 0x70
    return str(uuid.UUID(bytes=bytes(b)))


def load_schema(path):
    with open(path) as f:
        raw = json.load(f)
    parsed = fastavro.parse_schema(raw)
    canonical = fastavro.schema.to_parsing_canonical_form(raw)
    # fastavro gives the fingerprint's 8 bytes as hex, in the order they go on the wire
    # (little-endian); as a number (Herald's herald-fingerprint header) they read as a u64 LE.
    wire = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return parsed, wire


def single_object(parsed, wire, record):
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    return b"\xc3\x01" + wire + body.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default=os.environ.get("HERALD_KAFKA_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--prefix", default=os.environ.get("HERALD_KAFKA_PREFIX", "herald."))
    ap.add_argument("--producer", default="python-example", help="producer name (part of the id)")
    ap.add_argument("--user", action="append", required=True, help="recipient user id (repeat)")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--key-prefix", default=None, help="idempotency keys are PREFIX-N")
    ap.add_argument("--event-type", default="example.created")
    args = ap.parse_args()

    parsed, fingerprint = load_schema(SCHEMA_PATH)
    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",  # the Java client's partitioner, as Herald uses
    })
    topic = args.prefix + "requests"
    key_prefix = args.key_prefix or uuid.uuid4().hex
    failures = []

    def report(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            print(f"accepted {msg.key().decode()} {msg.partition()} {msg.offset()}", flush=True)

    for n in range(args.count):
        key = f"{key_prefix}-{n}"
        nid = notification_id(args.producer, key)
        record = {
            "notification_id": nid,
            "idempotency_key": key,
            "producer": args.producer,
            "recipients": {"users": args.user, "groups": [], "topic": None, "everyone": False},
            "event_type": args.event_type,
            "source": "python",
            "payload": json.dumps({"n": n, "title": f"From Python #{n}"}),
            "collapse_key": None,
            "deliver_at": None,
            "expires_at": None,
            "created_at": int(time.time() * 1000),
            "traceparent": None,
            "priority": "normal",
        }
        producer.produce(
            topic,
            key=nid,
            value=single_object(parsed, fingerprint, record),
            headers=[
                ("herald-schema", b"dev.herald.events.NotificationRequest"),
                ("herald-fingerprint", f"{struct.unpack('<Q', fingerprint)[0]:016x}".encode()),
            ],
            on_delivery=report,
        )
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or failures:
        print(f"error: {remaining} undelivered, failures: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
