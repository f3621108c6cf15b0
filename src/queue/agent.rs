//! The queue's view of a delivery agent: open a connection towards an intake domain,
//! then send journals on it one at a time. The real agent is
//! [`crate::delivery::Deliverer`]; the scheduler's tests put a scripted one in its
//! place and run on tokio's paused clock, so the retry table and the lifetime are
//! walked in virtual seconds.

use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;

use crate::delivery::{Connection, Deliverer, DeliveryError, Reply};
use crate::record::Record;

/// What an agent's methods return: a boxed future, so the queue can hold any agent.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Agent: Send + Sync {
    /// One connection to some host of `domain`, ready for a transaction.
    fn connect<'a>(
        &'a self,
        domain: &'a str,
        deadline: Instant,
    ) -> Pending<'a, Result<Box<dyn Session + 'a>, DeliveryError>>;
}

/// An open connection.
pub trait Session: Send {
    /// One journal, `message` its bytes, with no stage past `deadline`: a typed
    /// result of the one attempt; judging it is the queue's job.
    fn send<'a>(
        &'a mut self,
        journal: &'a Record,
        message: &'a [u8],
        deadline: Instant,
    ) -> Pending<'a, Result<Reply, DeliveryError>>;
    /// Readies the connection for the next transaction; an error means it is done.
    fn reset(&mut self, deadline: Instant) -> Pending<'_, Result<(), DeliveryError>>;
    fn close(self: Box<Self>) -> Pending<'static, ()>;
    /// The DCID the log names this connection by.
    fn dcid(&self) -> u64;
}

impl Agent for Deliverer {
    fn connect<'a>(
        &'a self,
        domain: &'a str,
        deadline: Instant,
    ) -> Pending<'a, Result<Box<dyn Session + 'a>, DeliveryError>> {
        Box::pin(async move {
            let connection = Deliverer::connect(self, domain, deadline).await?;
            Ok(Box::new(connection) as Box<dyn Session + 'a>)
        })
    }
}

impl Session for Connection<'_> {
    fn send<'a>(
        &'a mut self,
        journal: &'a Record,
        message: &'a [u8],
        deadline: Instant,
    ) -> Pending<'a, Result<Reply, DeliveryError>> {
        Box::pin(Connection::send(self, journal, message, deadline))
    }

    fn reset(&mut self, deadline: Instant) -> Pending<'_, Result<(), DeliveryError>> {
        Box::pin(Connection::reset(self, deadline))
    }

    fn close(self: Box<Self>) -> Pending<'static, ()> {
        Box::pin(Connection::close(*self))
    }

    fn dcid(&self) -> u64 {
        Connection::dcid(self)
    }
}
