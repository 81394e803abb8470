"""The OpenAPI description of the sync API; served at /openapi.json and kept as openapi.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("openapi.json")

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string", "description": "What is wrong and the fix."}}}
_USAGE = {"type": "object", "properties": {
    k: {"type": ["integer", "null"]} for k in ("input_tokens", "output_tokens", "total_tokens")}}
_CONVERSATION = {
    "type": "object",
    "required": ["uuid", "title", "active", "metadata", "started_at", "ended_at"],
    "properties": {
        "uuid": {"type": "string", "format": "uuid"},
        "title": {"type": "string"},
        "active": {"type": "boolean"},
        "metadata": {"type": "object"},
        "started_at": {"type": "number", "description": "Unix time, seconds."},
        "ended_at": {"type": ["number", "null"]},
    }}
_MESSAGE = {
    "type": "object",
    "required": ["uuid", "conversation_uuid", "content", "type", "sender", "processing_time_ms",
                 "created_at", "usage"],
    "properties": {
        "uuid": {"type": "string", "format": "uuid", "description": "Idempotency key."},
        "conversation_uuid": {"type": "string", "format": "uuid"},
        "content": {"type": "string"},
        "type": {"type": "string", "enum": ["text", "image", "audio"]},
        "sender": {"type": "string", "enum": ["user", "assistant", "system"]},
        "processing_time_ms": {"type": ["integer", "null"]},
        "created_at": {"type": "number"},
        "usage": {"$ref": "#/components/schemas/Usage"},
    }}


def _err(desc: str) -> dict[str, Any]:
    return {"description": desc,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Talkie history server", "version": "1",
                 "description": "Boxes push conversations and messages; parents read them on "
                                "the HTML pages (not part of this API)."},
        "components": {
            "securitySchemes": {"device": {"type": "http", "scheme": "bearer",
                                           "description": "One token per device, from "
                                                          "`python -m server add-device NAME`."}},
            "schemas": {"Error": _ERROR, "Usage": _USAGE, "Conversation": _CONVERSATION,
                        "Message": _MESSAGE},
        },
        "paths": {
            "/api/v1/sync": {"post": {
                "summary": "Upsert a batch of conversations and messages (idempotent by uuid).",
                "security": [{"device": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "conversations": {"type": "array",
                                          "items": {"$ref": "#/components/schemas/Conversation"}},
                        "messages": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/Message"}}}}}}},
                "responses": {
                    "200": {"description": "Stored (or already stored).",
                            "content": {"application/json": {"schema": {
                                "type": "object", "properties": {
                                    "conversations": {"type": "integer"},
                                    "messages": {"type": "integer"}}}}}},
                    "400": _err("Malformed JSON or a batch not matching the schema."),
                    "401": _err("Missing or wrong device token."),
                    "411": _err("No Content-Length."),
                    "413": _err("Body over the size limit (1 MB); send smaller batches."),
                    "415": _err("Content-Type is not application/json."),
                }}},
            "/api/v1/health": {"get": {"summary": "Liveness.", "responses": {
                "200": {"description": "Up.", "content": {"application/json": {"schema": {
                    "type": "object"}}}}}}},
        },
    }


def text() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"
