//! SIGTERM closes every connection with 320 CONNECTION_FORCED and RabbitMQ's
//! text, then the broker exits 0.

mod support;

use amqp_codec::types::ReplyCode;
use amqp_codec::{CloseCause, Event, Initiator};
use support::{Broker, Client};

#[test]
fn sigterm_closes_every_connection_with_320_and_exits_0() {
    let broker = Broker::start(5770..5780, &[]);
    let mut a = Client::connect(broker.addr);
    let mut b = Client::connect(broker.addr);
    let pid = broker.pid();
    let status = std::thread::spawn(move || broker.terminate());
    for c in [&mut a, &mut b] {
        let e = c.until(|e| matches!(e, Event::Closed { .. }));
        let Event::Closed {
            cause: CloseCause::Closed { initiator, reason },
        } = e
        else {
            panic!("expected a close handshake, got {e:?}");
        };
        assert_eq!(initiator, Initiator::Peer);
        assert_eq!(reason.code, ReplyCode::CONNECTION_FORCED);
        assert_eq!(
            reason.text.as_str(),
            Some("CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
        );
    }
    let status = status.join().unwrap().expect("the broker exits");
    assert!(status.success(), "pid {pid}: exit status {status}");
}
