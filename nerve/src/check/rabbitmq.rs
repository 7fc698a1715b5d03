//! `rabbitmq` (upstream nerve's, after RabbitMQ management's aliveness test): open an
//! AMQP 0-9-1 connection with the configured credentials and vhost, publish a message
//! and read it back with `basic.get`, all within the timeout; healthy when the message
//! comes back.
//!
//! Upstream used one shared queue named `nerve`, where two checkers (two nerves, or a
//! check still running when the next starts) can take each other's messages and fail.
//! Here each probe uses its own server-named, exclusive queue, which the broker deletes
//! when the connection closes: the same publish-and-get, nothing left behind.

use amqprs::channel::{BasicGetArguments, BasicPublishArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;

use super::{Check, CheckError};
use crate::config::RabbitmqCheckConfig;

#[derive(Debug)]
pub struct RabbitmqCheck {
    name: String,
    config: RabbitmqCheckConfig,
}

fn failed(what: &str, e: impl std::fmt::Display) -> CheckError {
    CheckError::Unusable(format!("rabbitmq {what}: {e}"))
}

impl RabbitmqCheck {
    pub fn new(name: String, config: &RabbitmqCheckConfig) -> Self {
        Self {
            name,
            config: config.clone(),
        }
    }

    async fn probe(&self, connection: &Connection) -> Result<(), CheckError> {
        let channel = connection
            .open_channel(None)
            .await
            .map_err(|e| failed("channel", e))?;
        let (queue, _, _) = channel
            .queue_declare(QueueDeclareArguments::exclusive_server_named())
            .await
            .map_err(|e| failed("queue.declare", e))?
            .ok_or_else(|| failed("queue.declare", "no reply"))?;
        let payload = format!("nerve-check {}", std::process::id()).into_bytes();
        channel
            .basic_publish(
                BasicProperties::default(),
                payload.clone(),
                BasicPublishArguments::new("", &queue),
            )
            .await
            .map_err(|e| failed("basic.publish", e))?;
        // The message is routed asynchronously: ask until it is there (the timeout
        // around the whole probe bounds this).
        loop {
            let got = channel
                .basic_get(BasicGetArguments::new(&queue).no_ack(true).finish())
                .await
                .map_err(|e| failed("basic.get", e))?;
            match got {
                Some((_, _, body)) if body == payload => break,
                Some(_) => return Err(failed("basic.get", "returned another message")),
                None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        let _ = channel.close().await;
        Ok(())
    }
}

impl Check for RabbitmqCheck {
    async fn check(&self) -> Result<(), CheckError> {
        let c = &self.config;
        let mut args = OpenConnectionArguments::new(
            &c.address.host,
            c.address.port,
            &c.username,
            c.password.expose(),
        );
        args.virtual_host(&c.vhost).connection_name("nerve");
        let timeout = c.address.timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let connection = Connection::open(&args)
                .await
                .map_err(|e| failed("connection", e))?;
            let result = self.probe(&connection).await;
            let _ = connection.close().await;
            result
        })
        .await;
        outcome.unwrap_or(Err(CheckError::Timeout(timeout)))
    }

    fn describe(&self) -> &str {
        &self.name
    }
}
