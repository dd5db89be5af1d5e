//! Policies: queue and exchange arguments applied by name pattern (RabbitMQ's
//! `rabbitmqctl set_policy`). Arguments given at declare win over a policy.
