"""What a kube-apiserver refuses before it stores an object, for the API emulator.

Custom resources are checked against their CustomResourceDefinition's structural
`openAPIV3Schema` as apiextensions-apiserver does: nulls in non-nullable fields dropped, fields
the schema does not name pruned (unless `x-kubernetes-preserve-unknown-fields`), then the rest
validated. Core objects get the few required-field rules of the API server's own validation
that stowage's objects can break. Every refusal is a list of field errors, rendered as the 422
`Invalid` Status the API server answers, with the same messages and cause reasons.
"""

import copy
import json
import re

import jsonschema

# apimachinery's validation messages, word for word: clients and people match on them.
DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + ")*"
DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{DNS1123_LABEL}')"
)
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{DNS1123_SUBDOMAIN}')"
)
LABEL_VALUE = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{LABEL_VALUE}')"
)
QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
QUALIFIED_NAME_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    f"for validation is '{QUALIFIED_NAME}')"
)

# (reason of the cause, how its message starts), as k8s.io/apimachinery's field.ErrorType.
REQUIRED = ("FieldValueRequired", "Required value")
INVALID = ("FieldValueInvalid", "Invalid value")
TYPE_INVALID = ("FieldValueTypeInvalid", "Invalid value")
NOT_SUPPORTED = ("FieldValueNotSupported", "Unsupported value")
TOO_LONG = ("FieldValueTooLong", "Too long")


class FieldError:
    """One `field.Error`: where, what kind, the bad value (when shown) and the detail."""

    _NO_VALUE = object()

    def __init__(self, field, kind, detail="", value=_NO_VALUE):
        self.field, self.kind, self.detail, self.value = field, kind, detail, value

    def body(self) -> str:
        """`field.Error.ErrorBody()`: the type, the value as Go prints it, the detail."""
        text = self.kind[1]
        if self.kind not in (REQUIRED, TOO_LONG) and self.value is not FieldError._NO_VALUE:
            value = self.value
            if value is None:
                text += ": null"
            elif isinstance(value, str):
                text += ": " + json.dumps(value)
            elif isinstance(value, bool):
                text += ": " + ("true" if value else "false")
            else:
                text += ": " + json.dumps(value, separators=(",", ":"))
        if self.detail:
            text += ": " + self.detail
        return text

    def cause(self) -> dict:
        return {"reason": self.kind[0], "message": self.body(), "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid_status(kind: str, group: str, name: str, errors: list) -> dict:
    """The 422 Status of `apierrors.NewInvalid`: `<Kind>.<group> "<name>" is invalid: …`, one
    cause per error, the message listing them all (bracketed when more than one)."""
    qualified = f"{kind}.{group}" if group else kind
    messages = []
    for error in errors:
        if str(error) not in messages:
            messages.append(str(error))
    listed = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    details = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [error.cause() for error in errors]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{qualified} "{name}" is invalid: {listed}',
        "reason": "Invalid",
        "details": details,
        "code": 422,
    }


# ----------------------------------------------------------------------------- metadata


def _name_rule(plural: str):
    """Which name rule the API server applies to objects of `plural`."""
    if plural == "namespaces":
        return re.compile(DNS1123_LABEL), 63, DNS1123_LABEL_MESSAGE
    if plural == "persistentvolumes":
        return None, None, None  # a path segment name: checked apart
    return re.compile(DNS1123_SUBDOMAIN), 253, DNS1123_SUBDOMAIN_MESSAGE


def validate_metadata(plural: str, obj: dict) -> list:
    """`ValidateObjectMeta`: a name (or generateName) that the resource's rule accepts, and
    label keys and values Kubernetes can select by."""
    errors = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = meta.get("name")
    if not name:
        if not meta.get("generateName"):
            errors.append(
                FieldError("metadata.name", REQUIRED, "name or generateName is required")
            )
    elif not isinstance(name, str):
        errors.append(FieldError("metadata.name", TYPE_INVALID, "must be a string", name))
    else:
        pattern, limit, message = _name_rule(plural)
        if pattern is None:
            for bad in (".", ".."):
                if name == bad:
                    errors.append(
                        FieldError("metadata.name", INVALID, f"may not be '{bad}'", name)
                    )
            for bad in ("/", "%"):
                if bad in name:
                    errors.append(
                        FieldError("metadata.name", INVALID, f"may not contain '{bad}'", name)
                    )
        else:
            if len(name) > limit:
                errors.append(
                    FieldError(
                        "metadata.name", INVALID, f"must be no more than {limit} characters", name
                    )
                )
            if not pattern.fullmatch(name):
                errors.append(FieldError("metadata.name", INVALID, message, name))
    labels = meta.get("labels") or {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            errors.extend(_label_key_errors(key))
            if not isinstance(value, str):
                errors.append(
                    FieldError("metadata.labels", TYPE_INVALID, "must be a string", value)
                )
                continue
            if len(value) > 63:
                errors.append(
                    FieldError(
                        "metadata.labels", INVALID, "must be no more than 63 characters", value
                    )
                )
            if not re.fullmatch(LABEL_VALUE, value):
                errors.append(FieldError("metadata.labels", INVALID, LABEL_VALUE_MESSAGE, value))
    return errors


def _label_key_errors(key: str) -> list:
    """`IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123 subdomain, the name at most
    63 characters of the label alphabet."""
    prefix, _, name = key.rpartition("/")
    errors = []
    if "/" in prefix:
        errors.append(
            FieldError(
                "metadata.labels",
                INVALID,
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character (e.g. 'MyName',  or "
                "'my.name',  or '123-abc', regex used for validation is "
                f"'{QUALIFIED_NAME}') with an optional DNS subdomain prefix and '/' (e.g. "
                "'example.com/MyName')",
                key,
            )
        )
        return errors
    if "/" in key and not prefix:
        errors.append(FieldError("metadata.labels", INVALID, "prefix part must be non-empty", key))
    elif prefix and not re.fullmatch(DNS1123_SUBDOMAIN, prefix):
        errors.append(
            FieldError("metadata.labels", INVALID, "prefix part " + DNS1123_SUBDOMAIN_MESSAGE, key)
        )
    if not name:
        errors.append(FieldError("metadata.labels", INVALID, "name part must be non-empty", key))
    elif len(name) > 63:
        errors.append(
            FieldError(
                "metadata.labels", INVALID, "name part must be no more than 63 characters", key
            )
        )
    elif not re.fullmatch(QUALIFIED_NAME, name):
        errors.append(FieldError("metadata.labels", INVALID, QUALIFIED_NAME_MESSAGE, key))
    return errors


# ----------------------------------------------------------------------------- core objects


def _containers(spec: dict, field: str, required: bool) -> list:
    errors = []
    containers = spec.get(field)
    if not containers:
        if required:
            errors.append(FieldError(f"spec.{field}", REQUIRED))
        return errors
    if not isinstance(containers, list):
        return [FieldError(f"spec.{field}", TYPE_INVALID, "must be an array", containers)]
    for index, container in enumerate(containers):
        container = container if isinstance(container, dict) else {}
        for key in ("name", "image"):
            if not container.get(key):
                errors.append(FieldError(f"spec.{field}[{index}].{key}", REQUIRED))
    return errors


def _pod(obj: dict) -> list:
    spec = obj.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    return _containers(spec, "containers", True) + _containers(spec, "initContainers", False)


def _storage_claim(spec: dict, quantity_field: str) -> list:
    errors = []
    if not spec.get("accessModes"):
        errors.append(
            FieldError("spec.accessModes", REQUIRED, "at least 1 access mode is required")
        )
    quantities = spec.get(quantity_field)
    if quantity_field == "resources":
        quantities = (quantities or {}).get("requests") if isinstance(quantities, dict) else None
        where = "spec.resources[storage]"
    else:
        where = "spec.capacity"
    if not isinstance(quantities, dict) or "storage" not in quantities:
        errors.append(FieldError(where, REQUIRED))
    mode = spec.get("volumeMode")
    if mode is not None and mode not in ("Block", "Filesystem"):
        errors.append(
            FieldError(
                "spec.volumeMode",
                NOT_SUPPORTED,
                'supported values: "Block", "Filesystem"',
                mode,
            )
        )
    return errors


def _pvc(obj: dict) -> list:
    spec = obj.get("spec")
    return _storage_claim(spec if isinstance(spec, dict) else {}, "resources")


def _pv(obj: dict) -> list:
    spec = obj.get("spec")
    return _storage_claim(spec if isinstance(spec, dict) else {}, "capacity")


CORE_RULES = {
    "pods": _pod,
    "persistentvolumeclaims": _pvc,
    "persistentvolumes": _pv,
}


def validate_core(plural: str, obj: dict) -> list:
    """The API server's own rules for the core kinds stowage writes or reads."""
    rule = CORE_RULES.get(plural)
    return rule(obj) if rule else []


# ----------------------------------------------------------------------------- custom resources


def crd_schema(crd: dict, version: str):
    """The `openAPIV3Schema` of `version` in `crd`, or None when the version is not served."""
    for served in (crd.get("spec") or {}).get("versions") or []:
        if served.get("name") == version and served.get("served", True):
            return ((served.get("schema") or {}).get("openAPIV3Schema")) or {}
    return None


def prune(value, schema: dict, root: bool = False):
    """Drops what the structural schema does not name, and nulls where it allows none, as
    apiextensions-apiserver's pruning and `PruneNonNullableNullsWithoutDefaults` do before
    validating. `apiVersion`, `kind` and `metadata` at the root are the API server's own."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        result = {}
        for key, item in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                result[key] = item
                continue
            if key in properties:
                sub = properties[key]
            elif isinstance(additional, dict):
                sub = additional
            elif additional is True or preserve:
                result[key] = item
                continue
            else:
                continue  # unknown: pruned, not refused
            if item is None and not sub.get("nullable") and "default" not in sub:
                continue
            result[key] = prune(item, sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def _as_json_schema(schema):
    """The structural schema as draft-4 JSON Schema (OpenAPI 3.0's dialect: boolean
    exclusiveMinimum/Maximum). Only what differs is rewritten: `nullable` admits null,
    `x-kubernetes-int-or-string` admits either; `format` is left unchecked."""
    if isinstance(schema, list):
        return [_as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _as_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = _as_json_schema(value)
        elif key in ("format", "nullable", "default", "example", "description") or key.startswith(
            "x-kubernetes-"
        ):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + out.get("anyOf", [])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    return out


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _supported(values) -> str:
    return "supported values: " + ", ".join(
        json.dumps(v) if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for v in values
        if v is not None
    )


def _schema_errors(error) -> list:
    """One jsonschema error as the field errors kube-openapi reports for it (the apiserver's
    `kubeOpenAPIResultToFieldErrs`)."""
    where = _path(error.absolute_path)
    kind = error.validator
    if kind == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return [FieldError(f"{where}.{key}" if where else key, REQUIRED) for key in missing]
    if kind == "type":
        wanted = error.validator_value
        wanted = wanted[0] if isinstance(wanted, list) else wanted
        actual = _json_type(error.instance)
        return [
            FieldError(
                where,
                TYPE_INVALID,
                f'{where} in body must be of type {wanted}: "{actual}"',
                actual,
            )
        ]
    if kind == "enum":
        return [FieldError(where, NOT_SUPPORTED, _supported(error.validator_value), error.instance)]
    if kind == "maxLength":
        return [
            FieldError(
                where,
                TOO_LONG,
                f"may not be more than {error.validator_value} bytes",
                error.instance,
            )
        ]
    details = {
        "minLength": f"{where} in body should be at least {error.validator_value} chars long",
        "pattern": f"{where} in body should match '{error.validator_value}'",
        "minimum": f"{where} in body should be greater than or equal to {error.validator_value}",
        "maximum": f"{where} in body should be less than or equal to {error.validator_value}",
        "minItems": f"{where} in body should have at least {error.validator_value} items",
        "maxItems": f"{where} in body should have at most {error.validator_value} items",
    }
    value = error.instance if not isinstance(error.instance, (dict, list)) else ""
    return [FieldError(where, INVALID, details.get(kind, error.message), value)]


def validate_custom(obj: dict, schema: dict) -> list:
    """Field errors of a (pruned) custom resource against its CRD's schema. metadata is
    validated as ObjectMeta (validate_metadata), never by the schema."""
    body = {key: value for key, value in obj.items() if key != "metadata"}
    errors = []
    for error in sorted(_validator(schema).iter_errors(body), key=_error_order):
        errors.extend(_schema_errors(error))
    return errors


# Validators by the id of the schema they check, the schema kept with them so that its id is
# not reused while cached: a large backup writes thousands of mirrors against one schema.
_VALIDATORS: dict = {}


def _validator(schema: dict):
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        checked = _as_json_schema(schema)
        checked.get("properties", {}).pop("metadata", None)
        cached = (schema, jsonschema.Draft4Validator(checked))
        if len(_VALIDATORS) >= 64:  # replaced CRDs' schemas: let them go
            _VALIDATORS.clear()
        _VALIDATORS[id(schema)] = cached
    return cached[1]


def _error_order(error):
    return [str(part) for part in error.absolute_path]


def admit(plural: str, group: str, obj: dict, schema) -> tuple:
    """What the API server would store for `obj` and the field errors that refuse it: a
    custom resource (when `schema` is its CRD's) pruned and checked against the schema, any
    object's metadata, a core object's own rules."""
    errors = validate_metadata(plural, obj)
    if schema is not None:
        obj = prune(copy.deepcopy(obj), schema, root=True)
        errors += validate_custom(obj, schema)
    elif not group:
        errors += validate_core(plural, obj)
    elif group == "coordination.k8s.io" and plural == "leases":
        errors += _lease(obj)
    return obj, errors


def _lease(obj: dict) -> list:
    """The API server's ValidateLeaseSpec: a duration above 0, transitions not below 0."""
    spec = obj.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    errors = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        errors.append(
            FieldError("spec.leaseDurationSeconds", INVALID, "must be greater than 0", duration)
        )
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        errors.append(
            FieldError(
                "spec.leaseTransitions", INVALID, "must be greater than or equal to 0", transitions
            )
        )
    return errors
