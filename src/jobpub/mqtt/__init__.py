"""An MQTT 3.1.1 / 5 client: bytes, one connection, and its errors.

It knows nothing of jobs: it takes messages and gives back, for each, the broker's
answer or why there was none. What an answer means is the caller's business. A
connection may also subscribe and hand what it receives to a callback.
"""

from jobpub.mqtt.codec import (
    MAX_PACKET_SIZE,
    PROTOCOL_V5,
    PROTOCOL_V311,
    REASON_NAMES,
    RECEIVE_MAXIMUM_PACKET_SIZE,
    UTF8_PAYLOAD,
    ConnAck,
    InboundMessage,
    Message,
    PublishProperties,
    decode_properties,
    encode_connect,
    encode_publish,
    encode_varint,
    topic_problem,
)
from jobpub.mqtt.connection import ACCEPTED, Answer, MqttConnection, OnMessage, Result
from jobpub.mqtt.errors import (
    AckTimeout,
    ConnectionLost,
    ConnectRefused,
    MqttError,
    NoConnAck,
    ProtocolError,
    ProtocolVersionRefused,
    SubscribeRefused,
    Unsendable,
)

__all__ = [
    "ACCEPTED",
    "MAX_PACKET_SIZE",
    "PROTOCOL_V5",
    "PROTOCOL_V311",
    "REASON_NAMES",
    "RECEIVE_MAXIMUM_PACKET_SIZE",
    "UTF8_PAYLOAD",
    "AckTimeout",
    "Answer",
    "ConnAck",
    "ConnectRefused",
    "ConnectionLost",
    "InboundMessage",
    "Message",
    "MqttConnection",
    "MqttError",
    "NoConnAck",
    "OnMessage",
    "ProtocolError",
    "ProtocolVersionRefused",
    "PublishProperties",
    "Result",
    "SubscribeRefused",
    "Unsendable",
    "decode_properties",
    "encode_connect",
    "encode_publish",
    "encode_varint",
    "topic_problem",
]
