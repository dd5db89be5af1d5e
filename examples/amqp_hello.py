#!/usr/bin/env python3
"""Publish and consume through berth's AMQP broker with pika, unchanged.

Usage: python3 examples/amqp_hello.py [amqp://guest:guest@127.0.0.1:5672/%2F]

Declares a durable queue `hello`, publishes a persistent message with a
publisher confirm, reads it back with basic.get and acks it. Works the same
against RabbitMQ.
"""
import sys

import pika

url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare(queue="hello", durable=True)
channel.basic_publish(
    exchange="",
    routing_key="hello",
    body=b"hello from berth",
    properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    mandatory=True,
)
print("published 1 persistent message to queue 'hello' (confirmed)")
method, properties, body = channel.basic_get(queue="hello")
if method is None:
    sys.exit("queue 'hello' is empty")
print(f"received {body.decode()!r} (redelivered={method.redelivered})")
channel.basic_ack(method.delivery_tag)
connection.close()
