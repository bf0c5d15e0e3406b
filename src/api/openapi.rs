//! The OpenAPI 3.0 document of the HTTP API, written out by hand: every route the router serves
//! is here (a test compares the two).

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn text_response(description: &str, media: &str) -> Value {
    json!({ "description": description, "content": { media: { "schema": { "type": "string" } } } })
}

fn device_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Device" })
}

fn devices_array() -> Value {
    json!({ "type": "array", "items": device_ref() })
}

fn id_parameter() -> Value {
    json!({
        "name": "id",
        "in": "path",
        "required": true,
        "description": "EnOcean sender id (8 hex digits), Efento serial (12 hex digits) or a free id; any case",
        "schema": { "type": "string" }
    })
}

/// Operations on the device store need one of these.
fn secured() -> Value {
    json!([{ "bearerAuth": [] }, { "basicAuth": [] }])
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let unauthorized = error_response("Missing or wrong credentials");
    let bad_request = error_response("The request is not valid; the error says why");
    let not_found = error_response("No device with this id");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "sensorgate HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Device onboarding (the registry the pipeline's decode and enrich stages read with registry = \"api\"), health, readiness and metrics."
        },
        "paths": {
            "/health": { "get": {
                "operationId": "health",
                "summary": "Liveness: 200 while the process runs",
                "responses": { "200": text_response("Alive", "text/plain") }
            }},
            "/ready": { "get": {
                "operationId": "ready",
                "summary": "Readiness: 200 while the pipeline runs, every source listens or is connected to its broker and every sink is connected (or writing); 503 otherwise, listing each component",
                "responses": {
                    "200": json_response("Ready", json!({ "$ref": "#/components/schemas/Readiness" })),
                    "503": json_response("Not ready", json!({ "$ref": "#/components/schemas/Readiness" }))
                }
            }},
            "/metrics": { "get": {
                "operationId": "metrics",
                "summary": "Counters, gauges (queue_depth, component_up) and latency histograms (component_latency_seconds: reception to durable in a sink; source_ack_latency_seconds: reception to the outcome a source acknowledges) in the Prometheus text exposition format (0.0.4)",
                "responses": { "200": text_response("Metrics", "text/plain") }
            }},
            "/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": { "200": json_response("The OpenAPI document", json!({ "type": "object" })) }
            }},
            "/docs": { "get": {
                "operationId": "docs",
                "summary": "A page that lists the routes and schemas of this document",
                "responses": { "200": text_response("HTML", "text/html") }
            }},
            "/live": { "get": {
                "operationId": "livePage",
                "summary": "A page that lists devices (last seen, last values, RSSI) and gateways (records, devices), refreshing itself every 2 s; open it as /live#token=TOKEN (or #basic=user:password), or give the credentials in its form",
                "responses": { "200": text_response("HTML", "text/html") }
            }},
            "/api/v1/devices": { "get": {
                "operationId": "listDevices",
                "summary": "Every onboarded device, by id; keys show as security: true",
                "security": secured(),
                "responses": {
                    "200": json_response("The devices", devices_array()),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/devices/backup": { "get": {
                "operationId": "backupDevices",
                "summary": "Every device in the form restore takes (keys are never returned: a restored device keeps the key already stored for it)",
                "security": secured(),
                "responses": {
                    "200": json_response("The devices", devices_array()),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/devices/restore": { "post": {
                "operationId": "restoreDevices",
                "summary": "Onboards an array of devices in one transaction: all of them or, if one is invalid, none",
                "security": secured(),
                "parameters": [{
                    "name": "mode",
                    "in": "query",
                    "required": false,
                    "description": "merge (default): devices not in the array stay; replace: the store holds exactly the array",
                    "schema": { "type": "string", "enum": ["merge", "replace"], "default": "merge" }
                }],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": {
                        "type": "array", "items": { "$ref": "#/components/schemas/DeviceInput" }
                    } } }
                },
                "responses": {
                    "200": json_response("What changed", json!({ "$ref": "#/components/schemas/RestoreSummary" })),
                    "400": bad_request.clone(),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/devices/{id}": {
                "parameters": [id_parameter()],
                "get": {
                    "operationId": "getDevice",
                    "summary": "One device",
                    "security": secured(),
                    "responses": {
                        "200": json_response("The device", device_ref()),
                        "401": unauthorized.clone(),
                        "404": not_found.clone()
                    }
                },
                "put": {
                    "operationId": "putDevice",
                    "summary": "Onboards or updates a device; its telegrams decode with it from the next one on",
                    "security": secured(),
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DeviceInput" } } }
                    },
                    "responses": {
                        "200": json_response("Updated", device_ref()),
                        "201": json_response("Onboarded", device_ref()),
                        "400": bad_request,
                        "401": unauthorized.clone()
                    }
                },
                "delete": {
                    "operationId": "deleteDevice",
                    "summary": "Removes a device",
                    "security": secured(),
                    "responses": {
                        "204": { "description": "Removed" },
                        "401": unauthorized.clone(),
                        "404": not_found
                    }
                }
            },
            "/api/v1/telemetry": { "get": {
                "operationId": "listTelemetry",
                "summary": "Every device the flows have seen since the start, most recently heard first, with its latest value per reading key",
                "security": secured(),
                "parameters": [{
                    "name": "limit", "in": "query", "required": false,
                    "description": "Only the N most recently heard devices",
                    "schema": { "type": "integer", "minimum": 0 }
                }],
                "responses": {
                    "200": json_response("The devices", json!({ "type": "array", "items": { "$ref": "#/components/schemas/DeviceTelemetry" } })),
                    "400": bad_request.clone(),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/telemetry/{id}": {
                "parameters": [id_parameter()],
                "get": {
                    "operationId": "getTelemetry",
                    "summary": "One device's latest value and time per reading key, its last gateway and RSSI, and its last records in brief",
                    "security": secured(),
                    "responses": {
                        "200": json_response("The device", json!({ "$ref": "#/components/schemas/DeviceTelemetry" })),
                        "401": unauthorized.clone(),
                        "404": error_response("No record of this device has gone by since the start")
                    }
                }
            },
            "/api/v1/gateways": { "get": {
                "operationId": "listGateways",
                "summary": "Every gateway heard since the start: last seen, records relayed, distinct devices",
                "security": secured(),
                "responses": {
                    "200": json_response("The gateways", json!({ "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "gateway": { "type": "string" },
                            "last_seen": { "type": "integer", "description": "Unix milliseconds" },
                            "records": { "type": "integer" },
                            "devices": { "type": "integer" }
                        }
                    } })),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/gateways/connected": { "get": {
                "operationId": "connectedGateways",
                "summary": "The gateways connected to the websocket sources now, longest connected first",
                "security": secured(),
                "responses": {
                    "200": json_response("The connections", json!({ "type": "array", "items": {
                        "type": "object",
                        "required": ["source", "peer", "mode", "tls", "connected_at", "messages"],
                        "properties": {
                            "source": { "type": "string" },
                            "gateway": { "type": "string", "description": "?gateway= of a raw gateway, or an Aruba AP's MAC once its first message named it" },
                            "peer": { "type": "string" },
                            "mode": { "type": "string", "enum": ["raw", "aruba"] },
                            "tls": { "type": "boolean" },
                            "connected_at": { "type": "integer", "description": "Unix milliseconds" },
                            "messages": { "type": "integer", "description": "Websocket messages received" }
                        }
                    } })),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/statistics/devices": { "get": {
                "operationId": "deviceStatistics",
                "summary": "Telegram statistics of every EnOcean device the esp3 decode stages have seen, in the EnOcean IoT Connector's shape",
                "security": secured(),
                "responses": {
                    "200": json_response("The devices", json!({ "type": "array", "items": { "$ref": "#/components/schemas/DeviceStatistics" } })),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/statistics/devices/{id}": {
                "parameters": [id_parameter()],
                "get": {
                    "operationId": "oneDeviceStatistics",
                    "summary": "One EnOcean device's telegram statistics (a one-element array, as the IoT Connector answers)",
                    "security": secured(),
                    "responses": {
                        "200": json_response("The device", json!({ "type": "array", "items": { "$ref": "#/components/schemas/DeviceStatistics" } })),
                        "400": bad_request.clone(),
                        "401": unauthorized.clone(),
                        "404": error_response("No telegram of this device has been decoded since the start")
                    }
                }
            },
            "/api/v1/statistics/gateways": { "get": {
                "operationId": "gatewayStatistics",
                "summary": "Telegram statistics of every gateway, in the EnOcean IoT Connector's shape, with the copies it relayed of telegrams another gateway relayed first",
                "security": secured(),
                "responses": {
                    "200": json_response("The gateways", json!({ "type": "array", "items": {
                        "type": "object",
                        "required": ["device", "stats"],
                        "properties": {
                            "device": { "type": "object", "properties": { "mac": { "type": "string" } } },
                            "stats": { "allOf": [
                                { "$ref": "#/components/schemas/TelegramStatistics" },
                                { "type": "object", "properties": { "duplicates": { "type": "integer" } } }
                            ] }
                        }
                    } })),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/tap": { "get": {
                "operationId": "tap",
                "summary": "Every record's document as it goes to the sinks, one JSON object per line, while the client reads (sensorgate tap)",
                "security": secured(),
                "parameters": [{
                    "name": "flow",
                    "in": "query",
                    "required": false,
                    "description": "Only this flow's records",
                    "schema": { "type": "string" }
                }],
                "responses": {
                    "200": text_response("Documents, one per line; {\"skipped\": N} when the client fell behind", "application/x-ndjson"),
                    "401": unauthorized.clone()
                }
            }},
            "/api/v1/downlinks/{id}": {
                "parameters": [{
                    "name": "id",
                    "in": "path",
                    "required": true,
                    "description": "Efento serial, 12 hex digits, any case",
                    "schema": { "type": "string" }
                }],
                "get": {
                    "operationId": "listDownlinks",
                    "summary": "The configuration changes queued for a serial and what became of each (pending, sent, confirmed)",
                    "security": secured(),
                    "responses": {
                        "200": json_response("The changes, oldest first", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Downlink" } })),
                        "401": unauthorized.clone()
                    }
                },
                "post": {
                    "operationId": "queueDownlink",
                    "summary": "Queues a configuration change; it goes out in the ACK of the device's next confirmable request",
                    "security": secured(),
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": {
                            "type": "object",
                            "description": "ProtoConfig fields by their /c document names, e.g. {\"measurement_period_base\": 120, \"transmission_interval\": 600}",
                            "additionalProperties": true
                        } } }
                    },
                    "responses": {
                        "202": json_response("Queued", json!({ "$ref": "#/components/schemas/Downlink" })),
                        "400": bad_request,
                        "401": unauthorized
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "The token in the variable [api] token_env names" },
                "basicAuth": { "type": "http", "scheme": "basic", "description": "user:password from the variable [api] basic_env names" }
            },
            "schemas": {
                "DeviceTelemetry": {
                    "type": "object",
                    "properties": {
                        "device": { "type": "string" },
                        "last_seen": { "type": "integer", "description": "Unix milliseconds" },
                        "records": { "type": "integer" },
                        "gateway": { "type": "string" },
                        "rssi": { "type": "integer" },
                        "latest": {
                            "type": "object",
                            "description": "By reading key (key/channel for devices with channels)",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "value": {},
                                    "ts": { "type": "integer", "description": "Unix seconds" },
                                    "unit": { "type": "string" }
                                }
                            }
                        },
                        "recent": { "type": "array", "items": { "type": "object" } }
                    }
                },
                "Downlink": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "integer" },
                        "serial": { "type": "string" },
                        "fields": { "type": "object", "additionalProperties": true },
                        "status": { "type": "string", "enum": ["pending", "sent", "confirmed"] },
                        "queued_at": { "type": "integer" },
                        "sent_at": { "type": "integer", "nullable": true },
                        "confirmed_at": { "type": "integer", "nullable": true },
                        "confirmed_by": { "type": "string", "nullable": true, "enum": ["configuration", "configuration_hash", null] }
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "string" } }
                },
                "TelegramStatistics": {
                    "type": "object",
                    "required": ["lastSeen", "notProcessed", "succesfullyProcessed", "totalTelegramCount"],
                    "properties": {
                        "lastSeen": { "type": "string", "description": "Unix seconds of the last telegram" },
                        "notProcessed": { "type": "integer", "description": "Telegrams not decoded (unknown device, decode or security error, a copy)" },
                        "succesfullyProcessed": { "type": "integer", "description": "Telegrams decoded and forwarded (spelled as the IoT Connector spells it)" },
                        "totalTelegramCount": { "type": "integer" }
                    }
                },
                "DeviceStatistics": {
                    "type": "object",
                    "required": ["device", "stats"],
                    "properties": {
                        "device": {
                            "type": "object",
                            "required": ["sourceEurid", "activeFlag"],
                            "properties": {
                                "sourceEurid": { "type": "string" },
                                "destinationEurid": { "type": "string" },
                                "eep": { "type": "string" },
                                "friendlyID": { "type": "string" },
                                "location": { "type": "string" },
                                "customTag": { "type": "string" },
                                "activeFlag": { "type": "string", "enum": ["true", "false"], "description": "Whether the device is in the registry" }
                            }
                        },
                        "stats": { "$ref": "#/components/schemas/TelegramStatistics" }
                    }
                },
                "Readiness": {
                    "type": "object",
                    "required": ["ready", "components"],
                    "properties": {
                        "ready": { "type": "boolean" },
                        "detail": { "type": "string", "enum": ["starting", "shutting down"], "description": "Present while the pipeline is not running" },
                        "components": { "type": "array", "items": {
                            "type": "object",
                            "required": ["component", "up"],
                            "properties": {
                                "component": { "type": "string", "description": "e.g. sink `kafka`, source `efento` (0.0.0.0:5683)" },
                                "up": { "type": "boolean" },
                                "detail": { "type": "string", "description": "Why it is not up" }
                            }
                        } }
                    }
                },
                "RestoreSummary": {
                    "type": "object",
                    "required": ["mode", "created", "updated", "removed", "total"],
                    "properties": {
                        "mode": { "type": "string", "enum": ["merge", "replace"] },
                        "created": { "type": "integer" },
                        "updated": { "type": "integer" },
                        "removed": { "type": "integer" },
                        "total": { "type": "integer" }
                    }
                },
                "Device": {
                    "type": "object",
                    "description": "One of eurid, serial or id is present",
                    "required": ["friendly_id", "location", "custom_tag", "fields", "security"],
                    "properties": {
                        "eurid": { "type": "string", "description": "EnOcean sender id, 8 lowercase hex digits" },
                        "serial": { "type": "string", "description": "Efento serial, 12 uppercase hex digits" },
                        "id": { "type": "string", "description": "Any other device, by the id its records carry" },
                        "eep": { "type": "string", "description": "EnOcean profile, rr-ff-tt" },
                        "friendly_id": { "type": "string" },
                        "location": { "type": "string" },
                        "custom_tag": { "type": "string" },
                        "fields": { "type": "object", "additionalProperties": true, "description": "User fields, added by the enrich stage" },
                        "security": { "type": "boolean", "description": "Whether a key is stored (the key itself is never returned)" }
                    }
                },
                "DeviceInput": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "In PUT the id may come from the path alone; key, slf and rlc are write-only",
                    "properties": {
                        "eurid": { "type": "string" },
                        "serial": { "type": "string" },
                        "id": { "type": "string" },
                        "eep": { "type": "string", "example": "a5-02-05" },
                        "friendly_id": { "type": "string" },
                        "location": { "type": "string" },
                        "custom_tag": { "type": "string" },
                        "fields": { "type": "object", "additionalProperties": true },
                        "key": { "type": "string", "description": "AES-128 key, 32 hex digits (EnOcean secure devices)", "writeOnly": true },
                        "slf": { "type": "string", "description": "Security level format, one byte in hex", "writeOnly": true },
                        "rlc": { "type": "string", "description": "Rolling code to expect first, hex", "writeOnly": true },
                        "security": { "type": "boolean", "description": "false removes a stored key; true or absent keeps it when no key is sent" }
                    }
                }
            }
        }
    })
}

/// Every (path, method) the document lists, methods in uppercase.
pub fn operations(document: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    out.push((path.clone(), method.to_ascii_uppercase()));
                }
            }
        }
    }
    out.sort();
    out
}
