//! amqp-broker: a RabbitMQ-compatible AMQP 0-9-1 broker (work in progress).

fn main() {
    eprintln!("amqp-broker: not built yet");
    std::process::exit(1);
}
