"""Custom actions for the zapi-channel demo assistant.

The Z-API channel attaches details about the incoming WhatsApp message to the
user message metadata under the ``"zapi"`` key, e.g.::

    {"zapi": {"sender_name": "Ana", "location": {"address": "Av. Paulista, 1000"}}}

(the channel's field names are Z-API's, in snake_case: see ``zapi_channel/inbound.py``).

These actions read that metadata defensively: any key may be missing, empty
or ``None``.
"""

from typing import Any, Dict, List, Optional

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher


def _zapi_metadata(tracker: Tracker) -> Dict[str, Any]:
    """Return ``latest_message.metadata["zapi"]`` or ``{}`` if absent/invalid."""
    metadata = (tracker.latest_message or {}).get("metadata") or {}
    if not isinstance(metadata, dict):
        return {}
    zapi = metadata.get("zapi") or {}
    return zapi if isinstance(zapi, dict) else {}


def _clean_text(value: Any) -> Optional[str]:
    """Return ``value`` stripped if it is a non-empty string, else ``None``."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


class ActionGreetByName(Action):
    """Greet the customer by WhatsApp name (if known) and show the menu."""

    def name(self) -> str:
        return "action_greet_by_name"

    def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: Dict[str, Any],
    ) -> List[Dict[str, Any]]:
        name = _clean_text(_zapi_metadata(tracker).get("sender_name"))
        if name:
            dispatcher.utter_message(response="utter_greet_name", name=name)
        else:
            dispatcher.utter_message(response="utter_greet")
        # A greeting always shows the menu.
        dispatcher.utter_message(response="utter_menu")
        return []


def _describe_location(location: Dict[str, Any]) -> Optional[str]:
    """Best human-readable description: name, then address, then 'lat, long'."""
    for key in ("name", "address"):
        text = _clean_text(location.get(key))
        if text:
            return text
    latitude, longitude = location.get("latitude"), location.get("longitude")
    if latitude not in (None, "") and longitude not in (None, ""):
        return f"{latitude}, {longitude}"
    return None


class ActionGotLocation(Action):
    """Acknowledge a location shared on WhatsApp."""

    def name(self) -> str:
        return "action_got_location"

    def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: Dict[str, Any],
    ) -> List[Dict[str, Any]]:
        location = _zapi_metadata(tracker).get("location")
        description = _describe_location(location) if isinstance(location, dict) else None
        if description:
            dispatcher.utter_message(text=f"Thanks! I got your location: {description}.")
        else:
            dispatcher.utter_message(text="Thanks for your location!")
        return []
