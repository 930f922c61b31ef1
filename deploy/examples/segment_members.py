#!/usr/bin/env python3
"""Rebuild the member set of one segment from segstream's output topics.

A small consumer for recommender teams, in Python with confluent-kafka. It
needs no schema: segstream puts the segment and the membership in record
headers (`segstream.segment`, `segstream.membership`), so it works for the
protobuf and the JSON output format alike.

Two ways to get the member set of segment S:

  --from current   Read the current-membership topic (output.current_topic,
                   compacted) from the beginning: each customer's latest
                   record is their segment; a tombstone means none. This is
                   how a new subscriber bootstraps.
  --from changes   Read a change topic from the beginning: a per-segment
                   topic (output.topic with {segment}) or the single change
                   topic. ENTERED for S adds the customer; ENTERED for any
                   other segment, EXITED, or a tombstone removes them.

Both read with isolation.level=read_committed (segstream publishes in
transactions) until every partition is at its end, then print the sorted
member ids as a JSON array. A service that keeps following would keep
polling the change topic after the bootstrap instead of stopping.

Example:
  segment_members.py --bootstrap 127.0.0.1:19092 \
      --topic customer-segments.current --from current --segment at_risk
"""

import argparse
import json
import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def headers_of(msg):
    out = {}
    for key, value in msg.headers() or []:
        out[key] = value.decode("utf-8") if value is not None else None
    return out


def read_to_end(bootstrap, topic, on_record, timeout_s):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "segment-members-example",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            sys.exit(f"topic {topic} does not exist")
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end = set()
        while len(at_end) < len(partitions):
            msg = consumer.poll(timeout_s)
            if msg is None:
                sys.exit(f"no record or end of partition within {timeout_s}s")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                sys.exit(str(msg.error()))
            at_end.discard(msg.partition())
            on_record(msg.key().decode("utf-8"), msg.value() is None, headers_of(msg))
    finally:
        consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--segment", required=True)
    parser.add_argument("--from", dest="source", choices=["current", "changes"], required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    members = set()
    current = {}

    def on_current(key, tombstone, headers):
        current[key] = None if tombstone else headers.get("segstream.segment")

    def on_change(key, tombstone, headers):
        if tombstone or headers.get("segstream.membership") == "EXITED":
            members.discard(key)
        elif headers.get("segstream.segment") == args.segment:
            members.add(key)
        else:
            members.discard(key)

    if args.source == "current":
        read_to_end(args.bootstrap, args.topic, on_current, args.timeout)
        members = {k for k, s in current.items() if s == args.segment}
    else:
        read_to_end(args.bootstrap, args.topic, on_change, args.timeout)
    json.dump(sorted(members), sys.stdout)
    print()


if __name__ == "__main__":
    main()
