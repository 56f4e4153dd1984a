"""The JSON the API reads and writes: ``{"message": "OK", "data": ...}`` as in the original app."""

from flask import jsonify, request

from toutiao.resources.errors import BadRequest

_MAX_ID = 2**64 - 1


def body() -> dict:
    """Return the request's JSON object."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("send a JSON object with Content-Type: application/json")
    return data


def id_field(data: dict, name: str = "target") -> int:
    """Return ``data[name]`` as an id: a positive integer."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_ID:
        raise BadRequest(f"{name!r} must be a positive integer id")
    return value


def text_field(data: dict, name: str) -> str:
    """Return ``data[name]`` as non-blank text."""
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be non-empty text")
    return value


def ok(data=None, status: int = 200):
    if status == 204:
        return "", 204
    return jsonify(message="OK", data=data), status
