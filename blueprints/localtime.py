"""Times as a person reads them: in their browser's time zone, with UTC one hover away.

The browser says which zone it is in (static/app.js keeps it in the `tz` cookie); the database,
the API and every URL stay in UTC. Without the cookie (no JavaScript, or the first page ever),
times are shown in UTC and say so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, g, request
from markupsafe import Markup, escape

COOKIE = "tz"
INPUT_FORMAT = "%Y-%m-%dT%H:%M:%S"  # what <input type="datetime-local" step="1"> shows


def zone() -> tzinfo:
    """The browser's zone for this request, UTC when it has not said or named none we know."""
    if "zone" not in g:
        name = request.cookies.get(COOKIE, "")
        try:
            g.zone = ZoneInfo(name) if name and len(name) <= 64 else UTC
        except (ZoneInfoNotFoundError, ValueError):
            g.zone = UTC
    zone: ZoneInfo = g.zone
    return zone


def zone_name() -> str:
    current = zone()
    return "UTC" if current is UTC else str(current)


def local(moment: datetime) -> datetime:
    """A stored (naive UTC) time in the browser's zone."""
    return moment.replace(tzinfo=UTC).astimezone(zone())


def input_value(moment: datetime | None) -> str:
    """A stored time as a datetime-local field shows it, in the browser's zone."""
    return local(moment).strftime(INPUT_FORMAT) if moment else ""


def utc_value(value: str) -> str:
    """A time typed in the browser's zone (or given with an offset) as UTC for the URL."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone())
    return moment.astimezone(UTC).strftime(INPUT_FORMAT) + "Z"


def from_input(value: str) -> datetime:
    """A time typed in the browser's zone, as the naive UTC the columns store."""
    return datetime.fromisoformat(utc_value(value).replace("Z", "")).replace(tzinfo=None)


def shown_value(value: str) -> str:
    """A URL's UTC time as the datetime-local field shows it; unparsable text as it is."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return input_value(moment)


def _exact(moment: datetime) -> str:
    there = local(moment)
    utc = moment.strftime("%H:%M:%S UTC")
    if zone() is UTC:
        return moment.strftime("%a %d %b %Y, %H:%M:%S UTC")
    return f"{there.strftime('%a %d %b %Y, %H:%M:%S')} {there.tzname()} ({utc})"


def time_tag(moment: datetime | None, now: datetime | None = None) -> Markup:
    """A <time>: how long ago within a day, else the local date and time; exact on hover."""
    from blueprints.ui import ago

    if moment is None:
        return Markup("<span class='muted'>never</span>")
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if abs(now - moment) < timedelta(days=1):
        shown = ago(moment, now)
    else:
        there = local(moment)
        year = "" if there.year == local(now).year else f" {there.year}"
        shown = f"{there.strftime('%b')} {there.day}{year}, {there.strftime('%H:%M')}"
    return Markup(
        f"<time datetime='{moment.isoformat()}Z' title='{escape(_exact(moment))}'>"
        f"{escape(shown)}</time>"
    )


def clock(moment: datetime, fmt: str = "%H:%M") -> str:
    """A stored time's wall-clock reading in the browser's zone (charts' hours)."""
    return local(moment).strftime(fmt)


def hour_span(start: datetime) -> str:
    """'14:00–15:00' for the hour starting then, read in the browser's zone."""
    return f"{clock(start)}–{clock(start + timedelta(hours=1))}"


def install(app: Flask) -> None:
    app.jinja_env.filters.update(
        clock=clock, input_value=input_value, shown_value=shown_value, hour_span=hour_span
    )
    app.jinja_env.globals.update(time_tag=time_tag, zone_name=zone_name)
