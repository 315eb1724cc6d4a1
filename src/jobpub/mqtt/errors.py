"""What can go wrong on an MQTT connection, as one small tree under `MqttError`."""

from __future__ import annotations


class MqttError(Exception):
    """Base class of every error this package raises or answers with."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal (a CONNACK reason or return code)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"broker refused the connection: {reason}")
        self.code = code


class ProtocolError(MqttError):
    """The broker sent something this client cannot read; the connection is dropped."""


class ConnectionLost(MqttError):
    """The connection ended; as a message's answer: it ended before the broker answered.

    As an answer it carries what the connection knew of the message, so that whoever
    publishes can decide whom a loss is charged to:
    `sent`: written to the socket (it may or may not have reached the broker);
    `oldest_unanswered`: the oldest message written and still awaiting its first ack;
    `after_refusal`: the broker's last answer on this connection was a refusal.
    """

    def __init__(
        self,
        reason: str,
        *,
        sent: bool = False,
        oldest_unanswered: bool = False,
        after_refusal: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.oldest_unanswered = oldest_unanswered
        self.after_refusal = after_refusal


class AckTimeout(ConnectionLost):
    """A message went unanswered past its ack deadline, so the connection was dropped."""


class Unsendable(MqttError):
    """This message breaks the protocol or the broker's announced limits; it was not sent.

    `code` is the MQTT 5 reason code that names the problem (0x81 malformed packet: a
    QoS of 3, 0x90 topic name invalid, 0x95 packet too large, 0x9A retain not
    supported, 0x9B QoS not supported).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
