//! One AMQP channel: consumers, unacked deliveries, confirms, transactions.
