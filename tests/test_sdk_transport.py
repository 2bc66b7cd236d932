"""How the SDK judges a failed attempt (ringcast/_transport.py: Transport.classify)."""

from __future__ import annotations

import grpc

from ringcast._endpoints import Outcome
from ringcast._transport import Transport
from ringcast.pipe import call_error
from ringcast.reasons import Reason
from services.common.errors import ServiceError


def test_a_transport_internal_error_is_retried_and_the_platform_s_is_not() -> None:
    reset = call_error(grpc.StatusCode.INTERNAL, "Internal error from Core")
    assert Transport.classify(reset) == (Outcome.HARD_FAILURE, "INTERNAL: Internal error from Core")
    ours = ServiceError(grpc.StatusCode.INTERNAL, Reason.OUT_OF_ORDER, "stream broken")
    assert Transport.classify(call_error(grpc.StatusCode.INTERNAL, "stream broken", ours.to_status())) is None
