"""What can go wrong on an MQTT connection, as one small tree under `MqttError`."""

from __future__ import annotations


class MqttError(Exception):
    """Base class of every error this package raises or answers with."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal (a CONNACK reason or return code).

    `server_reference`: another server the broker named (MQTT 5 0x9C/0x9D), if any.
    """

    def __init__(self, code: int, reason: str, *, server_reference: str | None = None) -> None:
        super().__init__(f"broker refused the connection: {reason}")
        self.code = code
        self.server_reference = server_reference


class ProtocolVersionRefused(ConnectRefused):
    """The broker does not speak the MQTT version asked for: a 3.1.1-only broker answers
    an MQTT 5 CONNECT with return code 0x01, an MQTT 5 broker may use reason 0x84."""


class ProtocolError(MqttError):
    """The broker sent something this client cannot read; the connection is dropped."""


class ConnectionLost(MqttError):
    """The connection ended; as a message's answer: it ended before the broker answered.

    As an answer it carries what the connection knew of the message, so that whoever
    publishes can decide whom a loss is charged to:
    `sent`: written to the socket (it may or may not have reached the broker);
    `oldest_unanswered`: the oldest message written and still awaiting its first ack;
    `after_refusal`: the broker's last answer on this connection was a refusal;
    `disconnect_reason`: the reason code of the broker's DISCONNECT (MQTT 5), if it sent one;
    `protocol_error`: this client dropped the connection because the broker broke the
    protocol (the cause is a ProtocolError);
    `server_reference`: another server the broker named in its DISCONNECT, if any.
    """

    def __init__(
        self,
        reason: str,
        *,
        sent: bool = False,
        oldest_unanswered: bool = False,
        after_refusal: bool = False,
        disconnect_reason: int | None = None,
        protocol_error: bool = False,
        server_reference: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.oldest_unanswered = oldest_unanswered
        self.after_refusal = after_refusal
        self.disconnect_reason = disconnect_reason
        self.protocol_error = protocol_error
        self.server_reference = server_reference


class AckTimeout(ConnectionLost):
    """A message went unanswered past its ack deadline, so the connection was dropped."""


class NoConnAck(ConnectionLost):
    """The broker took the TCP connection and CONNECT but never answered it in time.

    Some 3.1.1-only brokers do this to an MQTT 5 CONNECT with properties: they read
    the properties as 3.1.1 fields and wait for bytes that never come.
    """


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


class SubscribeRefused(MqttError):
    """The broker refused a subscription (SUBACK code 0x80 or above: not authorized,
    topic filter invalid, ...), or did not answer it in time (`code` None)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
