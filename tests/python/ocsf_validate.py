"""Validates OCSF events against the published OCSF schema, as a consumer
of Guard's OCSF output would: the JSON Schema of each event's class, from
the schema release and profiles the event names (ocsf-json-schema packages
every release), and the captions the schema gives each enumerated id (an event's
`status` must be the caption of its `status_id`, and so on).

Reads one event per line on standard input. Prints one JSON object per
event that fails, {"event": N, "class": NAME, "errors": [...]}, and exits 1
if any did.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def caption_errors(event, attributes):
    """An enumerated id's sibling (`status` beside `status_id`) must be the
    caption the schema gives that id (but for 99, Other, which the event
    names itself)."""
    errors = []
    for key, value in event.items():
        attribute = attributes.get(key, {})
        sibling, enum = attribute.get("sibling"), attribute.get("enum")
        if not sibling or sibling not in event or not enum or str(value) not in enum:
            continue
        caption = enum[str(value)]["caption"]
        if value != 99 and event[sibling] != caption:
            errors.append(f"{sibling}: {event[sibling]!r} is not the caption of {key} {value} ({caption!r})")
    return errors


def main():
    schemas, failed = {}, False
    for number, line in enumerate(sys.stdin):
        event = json.loads(line)
        version = event["metadata"]["version"]
        if version not in schemas:
            schemas[version] = (OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version)),
                                get_ocsf_schema(version=version))
        ocsf, raw = schemas[version]
        name = ocsf.lookup_class_name_from_uid(class_uid=event["class_uid"])
        # The profiles the event says it carries add their attributes.
        profiles = event["metadata"].get("profiles", [])
        validator = Draft202012Validator(ocsf.get_class_schema(class_name=name, profiles=profiles))
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
                  for e in validator.iter_errors(event)]
        class_schema = raw["classes"].get(name) or raw["base_event"]
        errors += caption_errors(event, class_schema["attributes"])
        if errors:
            failed = True
            print(json.dumps({"event": number, "class": name, "errors": errors}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
