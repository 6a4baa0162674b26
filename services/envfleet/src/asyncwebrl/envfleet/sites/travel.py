"""Travel: flight search with sorting and stop filters, a three-page booking flow
(passenger, extras, review) and "My trips" with booking lookup, cancellation,
flight changes and seat changes.

Schedules are not stored: ``flights(world, from, to, date)`` derives the same
five to seven flights for a route and day from the world's salt, so the site,
the templates and the oracle always agree.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import banner, esc, hidden, links, option, pill, table, text_input

TODAY = dt.date(2026, 4, 20)
FIRST_DAY, LAST_DAY = TODAY + dt.timedelta(days=1), dt.date(2026, 9, 30)
CITIES = {"LIS": "Lisbon", "BER": "Berlin", "OPO": "Porto", "VIE": "Vienna", "CPH": "Copenhagen", "ATH": "Athens",
          "DUB": "Dublin", "MAD": "Madrid", "PRG": "Prague", "EDI": "Edinburgh"}
SEATS = {"standard": ("Standard seat", 0), "window": ("Window seat", 9), "legroom": ("Extra legroom seat", 25)}
SEAT_PHRASE = {"window": "a window seat", "legroom": "an extra-legroom seat"}
BAGS = {"0": ("Cabin bag only", 0), "1": ("1 checked bag", 30), "2": ("2 checked bags", 55)}
BAG_PHRASE = {"1": "one checked bag", "2": "two checked bags"}
INSURANCE = 12
FIRST = ["Aoife", "Bastian", "Camille", "Dario", "Eleni", "Frederik", "Gwen", "Henrik", "Ilse", "Julien", "Katya",
         "Luca", "Mireille", "Nils", "Orla", "Pavel"]
LAST = ["Albrecht", "Byrne", "Castillo", "Dvorak", "Eriksen", "Fonseca", "Gallagher", "Horvath", "Ivanova",
        "Jansen", "Kowalski", "Lindgren"]
DOMAINS = ["mail.eu", "postbox.net", "inbox.ie"]
REF_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def long_date(iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def short_date(iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    return f"{DAYS[d.weekday()]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}"


def parse_day(text: str) -> str | None:
    """A bookable day as YYYY-MM-DD, or None."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    return day.isoformat() if FIRST_DAY <= day <= LAST_DAY else None


def city_code(text: str) -> str | None:
    want = normalise(text)
    for code, name in CITIES.items():
        if want in (code.lower(), name.lower(), f"{name.lower()} {code.lower()}"):
            return code
    return None


def _hm(minutes: int) -> str:
    return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}"


def _duration(minutes: int) -> str:
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _route(world: dict[str, Any], frm: str, to: str) -> tuple[int, int]:
    a, b = sorted((frm, to))
    r = random.Random(f"{world['salt']}:route:{a}:{b}")
    return r.randint(20, 52) * 5, r.randint(55, 160)


def flights(world: dict[str, Any], frm: str, to: str, day: str) -> list[dict[str, Any]]:
    """The day's flights on a route, in departure order; the same for the same world."""
    if frm == to or frm not in CITIES or to not in CITIES:
        return []
    base_dur, base_price = _route(world, frm, to)
    r = random.Random(f"{world['salt']}:{frm}:{to}:{day}")
    slots = sorted(r.sample(range(6 * 12, 22 * 12), r.randint(5, 7)))
    others = [c for c in sorted(CITIES) if c not in (frm, to)]
    out, prices, numbers = [], set(), set()
    for idx, slot in enumerate(slots):
        stops = r.choices([0, 1, 2], [5, 4, 1])[0]
        via = r.sample(others, stops)
        dur = base_dur + sum(r.randint(8, 30) * 5 + 40 for _ in range(stops))
        price = max(39, base_price + r.randint(-25, 95) - 18 * stops)
        while price in prices:
            price += 1
        prices.add(price)
        no = r.randint(100, 989)
        while no in numbers:
            no += 1
        numbers.add(no)
        dep = slot * 5
        out.append({"key": f"{frm}-{to}-{day}-{idx}", "idx": idx, "no": f"SW{no}", "frm": frm, "to": to, "date": day,
                    "dep": _hm(dep), "arr": _hm(dep + dur), "plus": (dep + dur) // 1440, "dur": dur, "stops": stops,
                    "via": [CITIES[c] for c in via], "price": price})
    return out


def flight_by_key(world: dict[str, Any], key: str) -> dict[str, Any] | None:
    parts = key.split("-")
    if len(parts) != 6 or not parts[5].isdigit():
        return None
    day = parse_day("-".join(parts[2:5]))
    if day is None:
        return None
    found = flights(world, parts[0], parts[1], day)
    idx = int(parts[5])
    return found[idx] if idx < len(found) else None


def _stops(f: dict[str, Any]) -> str:
    if not f["stops"]:
        return "Nonstop"
    return f"{f['stops']} stop{'s' if f['stops'] > 1 else ''} via {', '.join(f['via'])}"


def _filtered(found: list[dict[str, Any]], sort: str, stops: str) -> list[dict[str, Any]]:
    if stops in ("0", "1"):
        found = [f for f in found if f["stops"] <= int(stops)]
    if sort == "price":
        return sorted(found, key=lambda f: f["price"])
    if sort == "duration":
        return sorted(found, key=lambda f: (f["dur"], f["dep"]))
    return found


def _new_ref(rng: random.Random, taken) -> str:
    ref = "".join(rng.choices(REF_CHARS, k=6))
    while ref in taken:
        ref = "".join(rng.choices(REF_CHARS, k=6))
    return ref


def _random_day(rng: random.Random, start: dt.date, end: dt.date) -> str:
    return (start + dt.timedelta(days=rng.randint(0, (end - start).days))).isoformat()


def _nav():
    return [("flights", "Flights", "/travel/"), ("trips", "My trips", "/travel/trips"),
            ("hotels", "Hotels", "/travel/hotels"), ("help", "Help", "/travel/help"),
            ("signin", "Sign in", "/travel/signin")]


def _total(f: dict[str, Any], b: dict[str, Any]) -> int:
    return f["price"] + SEATS[b["seat"]][1] + BAGS[b["bags"]][1] + (INSURANCE if b["insurance"] else 0)


class TravelSite(Site):
    name = "travel"
    title = "SkyWay"

    def __init__(self) -> None:
        self.templates = [BookFlight(), TerminalLookup(), CheapestFare(), CancelTrip(), ChangeFlight()]

    def world(self, rng: random.Random) -> dict[str, Any]:
        w: dict[str, Any] = {"salt": rng.randrange(10**9), "bookings": {}, "pending": None, "refs_made": 0,
                             "alerts": 0}
        names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], 8)
        codes = sorted(CITIES)
        destinations = rng.sample(codes, 5)
        for i, name in enumerate(names):
            mine = i < 5
            to = destinations[i] if mine else rng.choice(codes)
            frm = rng.choice([c for c in codes if c != to])
            day = _random_day(rng, dt.date(2026, 5, 1), dt.date(2026, 7, 31))
            f = rng.choice(flights(w, frm, to, day))
            first, last = name.split(" ", 1)
            ref = _new_ref(rng, w["bookings"])
            w["bookings"][ref] = {
                "ref": ref, "key": f["key"], "name": name, "email": f"{first.lower()}.{last.lower()}@{rng.choice(DOMAINS)}",
                "seat": rng.choice(["standard", "window"]) if mine else "standard", "bags": rng.choice(["0", "1"]),
                "insurance": False, "terminal": str(rng.randint(1, 3)), "mine": mine, "refund": "",
                "status": "Cancelled" if i == 4 else "Confirmed", "paid": 0}
            b = w["bookings"][ref]
            b["paid"] = _total(f, b)
        w["seed_refs"] = sorted(w["bookings"])
        return w

    def routes(self):
        return [
            ("GET", "/", self.home),
            ("GET", "/search", self.search),
            ("GET", "/book/{key}", self.passenger),
            ("POST", "/book/{key}", self.passenger_post),
            ("GET", "/extras", self.extras),
            ("POST", "/extras", self.extras_post),
            ("GET", "/review", self.review),
            ("POST", "/review", self.confirm),
            ("GET", "/hold", self.hold),
            ("GET", "/trips", self.trips),
            ("GET", "/trips/find", self.find),
            ("GET", "/trip/{ref}", self.trip),
            ("GET", "/trip/{ref}/cancel", self.cancel_form),
            ("POST", "/trip/{ref}/cancel", self.cancel),
            ("GET", "/trip/{ref}/change", self.change),
            ("GET", "/trip/{ref}/change/{idx}", self.change_pick),
            ("POST", "/trip/{ref}/change/{idx}", self.change_confirm),
            ("GET", "/trip/{ref}/seat", self.seat_form),
            ("POST", "/trip/{ref}/seat", self.seat),
            ("GET", "/trip/{ref}/checkin", self.checkin),
            ("GET", "/hotels", self.hotels),
            ("POST", "/hotels", self.hotels_post),
            ("GET", "/help", self.help),
            ("GET", "/signin", self.signin),
            ("POST", "/signin", self.signin_post),
        ]

    # ------------------------------------------------------------ search

    def _search_form(self, frm: str = "", to: str = "", day: str = "", compact: bool = False) -> str:
        cls = "card searchbar compact" if compact else "card searchbar"
        return f"""<form class="{cls}" action="/travel/search" method="get" autocomplete="off">
<div>{text_input("from", "From", frm, placeholder="City or airport")}</div>
<div>{text_input("to", "To", to, placeholder="City or airport")}</div>
<div>{text_input("date", "Departure date", day, placeholder="YYYY-MM-DD")}</div>
<div class="passengers"><label>Passengers</label><span class="static-field">1 adult · Economy</span></div>
<div><button class="primary" id="search">Search flights</button></div></form>"""

    async def home(self, request: web.Request, ep, error: str = "", values: tuple[str, str, str] = ("", "", "")) -> web.Response:
        r = random.Random(f"{ep.world['salt']}:deals")
        deals = ""
        for i in range(4):
            frm, to = r.sample(sorted(CITIES), 2)
            day = _random_day(r, dt.date(2026, 5, 1), dt.date(2026, 6, 30))
            cheapest = min(f["price"] for f in flights(ep.world, frm, to, day))
            href = "/travel/search?" + urlencode({"from": frm, "to": to, "date": day})
            deals += (f'<div class="tile deal"><div class="muted">{esc(short_date(day))}</div>'
                      f'<a id="deal-{i}" href="{esc(href)}">{esc(CITIES[frm])} → {esc(CITIES[to])}</a>'
                      f'<div class="price">from £{cheapest}</div></div>')
        airports = " · ".join(f"{name} ({code})" for code, name in sorted(CITIES.items(), key=lambda c: c[1]))
        body = f"""<div class="hero-travel"><h1>Where to next?</h1>
<p>Low fares to {len(CITIES)} cities across Europe. Bookable until {long_date(LAST_DAY.isoformat())}.</p></div>
{banner(error)}{self._search_form(*values)}
<div class="row"><div class="grow"><h2>Deals this season</h2><div class="grid">{deals}</div>
<p class="muted">We fly to: {esc(airports)}</p></div>
<div class="sidebar"><div class="ad" id="plus-ad"><b>SkyWay Plus</b><br>Priority boarding and free seat selection
for £59 a year. <a id="plus-link" href="/travel/help#plus">Learn more</a></div></div></div>"""
        return page(self, "Cheap flights", body, _nav(), "flights")

    def _results(self, found: list[dict[str, Any]], link, button) -> str:
        rows = "".join(
            f'<div class="flight"><div class="times"><b>{f["dep"]}</b> → <b>{f["arr"]}</b>'
            f'{"<sup>+1</sup>" if f["plus"] else ""}<div class="muted">{esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])}</div></div>'
            f'<div class="dur">{_duration(f["dur"])}<div class="muted">{esc(_stops(f))}</div></div>'
            f'<div class="fno muted">{f["no"]}</div><div class="price fare">£{f["price"]}</div>{button(f)}</div>'
            for f in found
        )
        return rows or '<div class="card muted" id="no-results">No flights match these filters.</div>'

    def _filters(self, link, sort: str, stops: str) -> str:
        stop_links = links([(k, label, link(stops=v)) for k, v, label in (
            ("any", "", "Any number of stops"), ("nonstop", "0", "Nonstop only"), ("onestop", "1", "1 stop or fewer"))],
            {"": "any", "0": "nonstop", "1": "onestop"}.get(stops, ""), "filter-")
        sort_links = links([(k, label, link(sort=k)) for k, label in (
            ("depart", "Departure time"), ("price", "Lowest price"), ("duration", "Shortest trip"))],
            sort or "depart", "sort-")
        return (f'<div class="card sidebar filters"><h3>Stops</h3><div class="list">{stop_links}</div>'
                f'<h3>Sort by</h3><div class="list">{sort_links}</div></div>')

    async def search(self, request: web.Request, ep) -> web.Response:
        q = request.query
        raw = (field(q, "from"), field(q, "to"), field(q, "date"))
        frm, to, day = city_code(raw[0]), city_code(raw[1]), parse_day(raw[2])
        sort, stops = field(q, "sort"), field(q, "stops")
        if frm is None or to is None:
            bad = raw[0] if frm is None else raw[1]
            return await self.home(request, ep, f"We don't fly to or from \"{bad}\". Choose one of the cities listed below.", raw)
        if frm == to:
            return await self.home(request, ep, "Departure and destination must be different cities.", raw)
        if day is None:
            return await self.home(request, ep, f"Enter a departure date between {FIRST_DAY.isoformat()} and "
                                                f"{LAST_DAY.isoformat()} in the format YYYY-MM-DD.", raw)

        def link(**change):
            params = {"from": frm, "to": to, "date": day, "sort": sort, "stops": stops} | change
            return "/travel/search?" + urlencode({k: v for k, v in params.items() if v})

        d = dt.date.fromisoformat(day)
        prev_day, next_day = (d - dt.timedelta(days=1)).isoformat(), (d + dt.timedelta(days=1)).isoformat()
        found = _filtered(flights(ep.world, frm, to, day), sort, stops)
        rows = self._results(found, link, lambda f: f'<a class="button primary" id="select-{f["no"]}" '
                                                    f'href="/travel/book/{f["key"]}">Select</a>')
        nav_days = (f'<a id="prev-day" href="{esc(link(date=prev_day))}">← Previous day</a>' if parse_day(prev_day) else "")
        nav_days += (f'<a id="next-day" href="{esc(link(date=next_day))}">Next day →</a>' if parse_day(next_day) else "")
        body = f"""{self._search_form(CITIES[frm], CITIES[to], day, compact=True)}
<div class="row">{self._filters(link, sort, stops)}<div class="grow">
<div class="results-head"><h2>{esc(CITIES[frm])} → {esc(CITIES[to])} · {esc(short_date(day))}</h2>
<span class="day-links">{nav_days}</span></div>{rows}</div></div>"""
        return page(self, "Search results", body, _nav(), "flights")

    # ------------------------------------------------------------ booking

    def _summary(self, f: dict[str, Any], extra: str = "") -> str:
        return f"""<div class="card summary"><h3>Your flight</h3><p><b>{esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])}</b><br>
{esc(short_date(f["date"]))} · {f["dep"]} → {f["arr"]}<br><span class="muted">{f["no"]} · {esc(_stops(f))} ·
{_duration(f["dur"])}</span></p><p>Fare: <span class="price">£{f["price"]}</span></p>{extra}</div>"""

    async def passenger(self, request: web.Request, ep, error: str = "", values: tuple[str, str] = ("", "")) -> web.Response:
        f = flight_by_key(ep.world, request.match_info["key"])
        if f is None:
            return page(self, "Not found", '<h1>This flight is no longer available</h1><a href="/travel/">Search again</a>', _nav())
        back = "/travel/search?" + urlencode({"from": f["frm"], "to": f["to"], "date": f["date"]})
        body = f"""<h1>Who's flying?</h1>{banner(error)}<div class="row">
<form class="card grow" method="post" action="/travel/book/{esc(f["key"])}" autocomplete="off">
<h2>Passenger 1 · Adult</h2><div class="form-grid">
<div>{text_input("pax-name", "Full name (as on passport)", values[0], name="name")}</div>
<div>{text_input("pax-email", "Email for your e-ticket", values[1], name="email")}</div></div>
{option("checkbox", "newsletter", "newsletter", "Send me SkyWay deals by email", value="yes")}
<div class="actions"><a class="button" id="back" href="{esc(back)}">Back to results</a>
<button class="primary" id="to-extras">Continue to extras</button></div></form>
{self._summary(f, '<a id="signin-link" href="/travel/signin">Sign in to use saved passengers</a>')}</div>"""
        return page(self, "Passenger details", body, _nav(), "flights")

    async def passenger_post(self, request: web.Request, ep) -> web.Response:
        f = flight_by_key(ep.world, request.match_info["key"])
        form = await request.post()
        name, email = field(form, "name"), field(form, "email")
        if f is None:
            return redirect("/travel/")
        if not re.fullmatch(r"[A-Za-zÀ-ÿ' -]{2,60}", name) or " " not in name:
            return await self.passenger(request, ep, "Enter the passenger's first and last name.", (name, email))
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", email):
            return await self.passenger(request, ep, "Enter a valid email address, like name@example.com.", (name, email))
        ep.world["pending"] = {"key": f["key"], "name": name, "email": email, "seat": "standard", "bags": "0",
                               "insurance": False}
        return redirect("/travel/extras")

    def _seat_choices(self, current: str) -> str:
        return "".join(
            option("radio", f"seat-{k}", "seat", f'<span><b>{esc(label)}</b><br><span class="muted">'
                   f'{"Included" if not cost else f"+£{cost}"}</span></span>', value=k, checked=k == current,
                   cls="choice", sep="")
            for k, (label, cost) in SEATS.items()
        )

    async def extras(self, request: web.Request, ep, error: str = "") -> web.Response:
        p = ep.world["pending"]
        f = flight_by_key(ep.world, p["key"]) if p else None
        if f is None:
            return redirect("/travel/")
        bags = "".join(
            option("radio", f"bags-{k}", "bags", f'{esc(label)} {"(included)" if not cost else f"(+£{cost})"}', value=k,
                   checked=k == p["bags"])
            for k, (label, cost) in BAGS.items()
        )
        body = f"""<h1>Seats and extras</h1>{banner(error)}<div class="row">
<form class="card grow" method="post" action="/travel/extras"><h2>Seat</h2><div class="choices">{self._seat_choices(p["seat"])}</div>
<h2>Luggage</h2><div class="opts">{bags}</div><h2>Travel insurance</h2>
{option("checkbox", "insurance", "insurance", f"Cover cancellations and lost luggage (+£{INSURANCE})", value="yes",
        checked=p["insurance"])}
<div class="actions"><a class="button" id="back" href="/travel/book/{esc(p["key"])}">Back</a>
<button class="primary" id="to-review">Continue to review</button></div></form>
{self._summary(f, f'<p class="muted">Passenger: {esc(p["name"])}</p>')}</div>"""
        return page(self, "Extras", body, _nav(), "flights")

    async def extras_post(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        p = ep.world["pending"]
        if p is None:
            return redirect("/travel/")
        seat, bags = field(form, "seat", "standard"), field(form, "bags", "0")
        if seat not in SEATS or bags not in BAGS:
            return await self.extras(request, ep, "Choose a seat and a luggage option.")
        p.update(seat=seat, bags=bags, insurance=field(form, "insurance") == "yes")
        return redirect("/travel/review")

    async def review(self, request: web.Request, ep) -> web.Response:
        p = ep.world["pending"]
        f = flight_by_key(ep.world, p["key"]) if p else None
        if f is None:
            return redirect("/travel/")
        body = f"""<h1>Review and pay</h1><div class="row"><div class="card grow"><table>
<tr><td>Flight</td><td>{f["no"]} · {esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])}</td><td>£{f["price"]}</td></tr>
<tr><td>Date</td><td>{esc(short_date(f["date"]))} · {f["dep"]} → {f["arr"]} · {esc(_stops(f))}</td><td></td></tr>
<tr><td>Passenger</td><td>{esc(p["name"])} · {esc(p["email"])}</td><td></td></tr>
<tr><td>Seat</td><td>{esc(SEATS[p["seat"]][0])}</td><td>£{SEATS[p["seat"]][1]}</td></tr>
<tr><td>Luggage</td><td>{esc(BAGS[p["bags"]][0])}</td><td>£{BAGS[p["bags"]][1]}</td></tr>
<tr><td>Insurance</td><td>{"Yes" if p["insurance"] else "No"}</td><td>£{INSURANCE if p["insurance"] else 0}</td></tr>
<tr class="total"><td>Total</td><td></td><td class="price" id="total">£{_total(f, p)}</td></tr></table>
<form method="post" action="/travel/review" class="actions"><a class="button" id="edit-extras" href="/travel/extras">Change extras</a>
<button class="primary" id="confirm-booking">Confirm and pay £{_total(f, p)}</button>
<a class="button" id="hold-fare" href="/travel/hold">Hold this fare for 24 hours (£5)</a></form></div>
<div class="card summary"><h3>Payment</h3><p>Card ending 4242<br><span class="muted">Saved card · expires 08/28</span></p>
<p class="muted">Fares are non-refundable but can be changed or turned into travel credit.</p></div></div>"""
        return page(self, "Review", body, _nav(), "flights")

    async def confirm(self, request: web.Request, ep) -> web.Response:
        await request.post()
        w = ep.world
        p = w["pending"]
        f = flight_by_key(w, p["key"]) if p else None
        if f is None:
            return redirect("/travel/")
        w["refs_made"] += 1
        ref = _new_ref(random.Random(f"{w['salt']}:ref:{w['refs_made']}"), w["bookings"])
        w["bookings"][ref] = p | {"ref": ref, "terminal": str(1 + sum(map(ord, f["key"])) % 3), "mine": True,
                                  "refund": "", "status": "Confirmed", "paid": _total(f, p)}
        w["pending"] = None
        return redirect(f"/travel/trip/{ref}?new=1")

    async def hold(self, request: web.Request, ep) -> web.Response:
        body = """<h1>Hold this fare</h1><div class="card narrow"><p>Fare holds are not available on this route right now.
Your booking has not been made.</p><a class="button" id="hold-back" href="/travel/review">Back to review</a></div>"""
        return page(self, "Hold fare", body, _nav(), "flights")

    # ------------------------------------------------------------ trips

    async def trips(self, request: web.Request, ep, error: str = "") -> web.Response:
        w = ep.world
        mine = sorted((b for b in w["bookings"].values() if b["mine"]), key=lambda b: (b["key"].split("-", 2)[2], b["ref"]))
        rows = ""
        for b in mine:
            f = flight_by_key(w, b["key"])
            if f is None:
                continue
            rows += (f'<tr><td><a id="trip-{esc(b["ref"])}" href="/travel/trip/{esc(b["ref"])}">{esc(b["ref"])}</a></td>'
                     f'<td>{esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])}</td><td>{esc(short_date(f["date"]))}</td>'
                     f'<td>{esc(b["name"])}</td><td>{pill(b["status"])}</td></tr>')
        rows = rows or '<tr><td colspan="5" class="muted">No trips yet.</td></tr>'
        body = f"""<h1>My trips</h1>{banner(error)}<div class="row"><div class="grow">{table(["Booking", "Route", "Date", "Passenger", "Status"], rows)}
<p class="muted">Trips booked while signed out, or by someone else, can be found with the booking reference.</p></div>
<form class="card sidebar lookup" action="/travel/trips/find" method="get" autocomplete="off"><h3>Find a booking</h3>
{text_input("lookup-ref", "Booking reference", name="ref", placeholder="e.g. K7Q2XM")}
{text_input("lookup-name", "Passenger last name", name="last")}
<div class="actions"><button class="primary" id="lookup">Find booking</button></div></form></div>"""
        return page(self, "My trips", body, _nav(), "trips")

    async def find(self, request: web.Request, ep) -> web.Response:
        ref, last = field(request.query, "ref").upper(), field(request.query, "last")
        b = ep.world["bookings"].get(ref)
        if b is None or not last or normalise(b["name"].split(" ", 1)[1]) != normalise(last):
            return await self.trips(request, ep, "No booking matches that reference and last name.")
        return redirect(f"/travel/trip/{ref}")

    def _booking(self, ep, request: web.Request) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        b = ep.world["bookings"].get(request.match_info["ref"])
        return (b, flight_by_key(ep.world, b["key"])) if b else (None, None)

    def _missing(self) -> web.Response:
        return page(self, "Not found", '<h1>Booking not found</h1><a id="back" href="/travel/trips">Back to My trips</a>', _nav())

    async def trip(self, request: web.Request, ep) -> web.Response:
        b, f = self._booking(ep, request)
        if b is None or f is None:
            return self._missing()
        q = request.query
        notice = (banner("Booking confirmed. Your e-ticket is on its way.", "ok") if "new" in q else
                  banner("Your flight has been changed.", "ok") if "changed" in q else
                  banner("Your seat has been changed.", "ok") if "seat" in q else
                  banner(f"Booking cancelled. Refund: {'travel credit' if b['refund'] == 'credit' else 'to your card'}.", "ok")
                  if "cancelled" in q else "")
        ref = esc(b["ref"])
        if b["status"] == "Confirmed":
            actions = (f'<a class="button primary" id="check-in" href="/travel/trip/{ref}/checkin">Check in</a>'
                       f'<a class="button" id="change-flight" href="/travel/trip/{ref}/change">Change flight</a>'
                       f'<a class="button" id="change-seat" href="/travel/trip/{ref}/seat">Change seat</a>'
                       f'<a class="button" id="e-ticket" href="/travel/help#tickets">Download e-ticket</a>'
                       f'<a class="button danger" id="cancel-booking" href="/travel/trip/{ref}/cancel">Cancel booking</a>')
        else:
            actions = '<a class="button primary" id="book-again" href="/travel/">Book a new flight</a>'
        body = f"""<h1>Trip to {esc(CITIES[f["to"]])} · {ref} {pill(b["status"])}</h1>{notice}
<div class="row"><div class="card grow"><h3>Flight {f["no"]}</h3><table>
<tr><td>Route</td><td>{esc(CITIES[f["frm"]])} ({f["frm"]}) → {esc(CITIES[f["to"]])} ({f["to"]})</td></tr>
<tr><td>Date</td><td>{esc(short_date(f["date"]))}</td></tr>
<tr><td>Departs</td><td>{f["dep"]}</td></tr><tr><td>Departure terminal</td><td id="terminal">Terminal {esc(b["terminal"])}</td></tr>
<tr><td>Arrives</td><td>{f["arr"]}{" (+1 day)" if f["plus"] else ""}</td></tr><tr><td>Stops</td><td>{esc(_stops(f))}</td></tr></table></div>
<div class="card grow"><h3>Passenger</h3><table><tr><td>Name</td><td>{esc(b["name"])}</td></tr>
<tr><td>Email</td><td>{esc(b["email"])}</td></tr><tr><td>Seat</td><td>{esc(SEATS[b["seat"]][0])}</td></tr>
<tr><td>Luggage</td><td>{esc(BAGS[b["bags"]][0])}</td></tr><tr><td>Insurance</td><td>{"Yes" if b["insurance"] else "No"}</td></tr>
<tr><td>Total paid</td><td class="price">£{b["paid"]}</td></tr></table></div></div>
<div class="card actions">{actions}<a class="button" id="all-trips" href="/travel/trips">All trips</a></div>"""
        return page(self, f"Trip {b['ref']}", body, _nav(), "trips")

    async def cancel_form(self, request: web.Request, ep, error: str = "") -> web.Response:
        b, f = self._booking(ep, request)
        if b is None or f is None:
            return self._missing()
        if b["status"] != "Confirmed":
            return redirect(f"/travel/trip/{b['ref']}")
        ref = esc(b["ref"])
        credit = round(b["paid"] * 1.1)
        body = f"""<h1>Cancel booking {ref}</h1>{banner(error)}<form class="card narrow" method="post" action="/travel/trip/{ref}/cancel">
<p>{esc(b["name"])} · {esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])} on {esc(short_date(f["date"]))} at {f["dep"]}</p>
<div class="fieldset-label">How would you like your refund?</div><div class="opts stacked">
{option("radio", "refund-card", "refund", f"£{b['paid']} back to the card you paid with (5–7 working days)", value="card",
        checked=True)}
{option("radio", "refund-credit", "refund", f"£{credit} SkyWay travel credit, valid for 12 months", value="credit")}</div>
<div class="actions"><button class="danger" id="confirm-cancel">Cancel this booking</button>
<a class="button" id="keep-booking" href="/travel/trip/{ref}">Keep my booking</a></div></form>"""
        return page(self, "Cancel booking", body, _nav(), "trips")

    async def cancel(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        b, f = self._booking(ep, request)
        if b is None or f is None:
            return self._missing()
        refund = field(form, "refund")
        if refund not in ("card", "credit"):
            return await self.cancel_form(request, ep, "Choose how you would like your refund.")
        if b["status"] == "Confirmed":
            b.update(status="Cancelled", refund=refund)
        return redirect(f"/travel/trip/{b['ref']}?cancelled=1")

    async def change(self, request: web.Request, ep) -> web.Response:
        b, f = self._booking(ep, request)
        if b is None or f is None:
            return self._missing()
        if b["status"] != "Confirmed":
            return redirect(f"/travel/trip/{b['ref']}")
        ref = esc(b["ref"])
        raw, sort, stops = field(request.query, "date"), field(request.query, "sort"), field(request.query, "stops")
        day = parse_day(raw)
        error = "" if not raw or day else (f"Enter a date between {FIRST_DAY.isoformat()} and {LAST_DAY.isoformat()} "
                                           "in the format YYYY-MM-DD.")

        def link(**change):
            params = {"date": day, "sort": sort, "stops": stops} | change
            return f"/travel/trip/{ref}/change?" + urlencode({k: v for k, v in params.items() if v})

        results = ""
        if day:
            found = _filtered(flights(ep.world, f["frm"], f["to"], day), sort, stops)
            rows = self._results(found, link, lambda g: (
                '<span class="muted">Current flight</span>' if g["key"] == b["key"] else
                f'<a class="button primary" id="choose-{g["no"]}" href="/travel/trip/{ref}/change/{g["idx"]}?date={day}">Choose</a>'))
            results = (f'<div class="row">{self._filters(link, sort, stops)}<div class="grow"><div class="results-head">'
                       f'<h2>{esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])} · {esc(short_date(day))}</h2></div>{rows}</div></div>')
        body = f"""<h1>Change flight · {ref}</h1>{banner(error)}
<form class="card searchbar compact" method="get" action="/travel/trip/{ref}/change" autocomplete="off">
<div class="current"><span class="muted">Current flight</span><br><b>{f["no"]}</b> {esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])},
{esc(short_date(f["date"]))} {f["dep"]}</div>
<div>{text_input("change-date", "New date", raw, name="date", placeholder="YYYY-MM-DD")}</div>
<div><button class="primary" id="change-search">Show flights</button></div>
<div><a class="button" id="change-cancel" href="/travel/trip/{ref}">Keep current flight</a></div></form>{results}"""
        return page(self, "Change flight", body, _nav(), "trips")

    def _change_target(self, ep, request: web.Request, day_text: str):
        b, f = self._booking(ep, request)
        day = parse_day(day_text)
        if b is None or f is None or day is None or b["status"] != "Confirmed":
            return b, None
        try:
            idx = int(request.match_info["idx"])
        except ValueError:
            return b, None
        found = flights(ep.world, f["frm"], f["to"], day)
        return b, (found[idx] if 0 <= idx < len(found) else None)

    async def change_pick(self, request: web.Request, ep, error: str = "") -> web.Response:
        b, g = self._change_target(ep, request, field(request.query, "date"))
        if b is None:
            return self._missing()
        if g is None:
            return redirect(f"/travel/trip/{b['ref']}/change")
        old = flight_by_key(ep.world, b["key"])
        diff = g["price"] - old["price"] if old else 0
        note = f"Fare difference to pay: £{diff}" if diff > 0 else "No fare difference to pay (differences are not refunded)."
        ref = esc(b["ref"])
        body = f"""<h1>Confirm your new flight</h1>{banner(error)}<div class="row">
<form class="card grow" method="post" action="/travel/trip/{ref}/change/{g["idx"]}">{hidden({"date": g["date"]})}
<p><b>{g["no"]}</b> · {esc(CITIES[g["frm"]])} → {esc(CITIES[g["to"]])} · {esc(short_date(g["date"]))} · {g["dep"]} → {g["arr"]} ·
{esc(_stops(g))}</p><p>{esc(note)} Change fee: £0.</p>
<h2>Seat on the new flight</h2><p class="muted">Seats do not carry over to a new flight.</p>
<div class="choices">{self._seat_choices("standard")}</div>
<div class="actions"><a class="button" id="back" href="/travel/trip/{ref}/change?date={g["date"]}">Back</a>
<button class="primary" id="confirm-change">Confirm change</button></div></form></div>"""
        return page(self, "Confirm change", body, _nav(), "trips")

    async def change_confirm(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        b, g = self._change_target(ep, request, field(form, "date"))
        if b is None:
            return self._missing()
        if g is None:
            return redirect(f"/travel/trip/{b['ref']}")
        seat = field(form, "seat", "standard")
        if seat not in SEATS:
            return await self.change_pick(request, ep, "Choose a seat.")
        old = flight_by_key(ep.world, b["key"])
        b["paid"] += max(0, g["price"] - (old["price"] if old else g["price"])) + SEATS[seat][1]
        b.update(key=g["key"], seat=seat)
        return redirect(f"/travel/trip/{b['ref']}?changed=1")

    async def seat_form(self, request: web.Request, ep) -> web.Response:
        b, f = self._booking(ep, request)
        if b is None or f is None:
            return self._missing()
        ref = esc(b["ref"])
        body = f"""<h1>Change seat · {ref}</h1><form class="card narrow" method="post" action="/travel/trip/{ref}/seat">
<p>{f["no"]} · {esc(CITIES[f["frm"]])} → {esc(CITIES[f["to"]])} · {esc(short_date(f["date"]))}</p>
<div class="choices">{self._seat_choices(b["seat"])}</div>
<div class="actions"><button class="primary" id="save-seat">Save seat</button>
<a class="button" id="back" href="/travel/trip/{ref}">Back</a></div></form>"""
        return page(self, "Change seat", body, _nav(), "trips")

    async def seat(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        b = ep.world["bookings"].get(request.match_info["ref"])
        if b is None:
            return self._missing()
        seat = field(form, "seat")
        if seat in SEATS and b["status"] == "Confirmed":
            b["paid"] += max(0, SEATS[seat][1] - SEATS[b["seat"]][1])
            b["seat"] = seat
            return redirect(f"/travel/trip/{b['ref']}?seat=1")
        return redirect(f"/travel/trip/{b['ref']}")

    async def checkin(self, request: web.Request, ep) -> web.Response:
        ref = esc(field(request.match_info, "ref"))
        body = f"""<h1>Online check-in</h1><div class="card narrow"><p>Check-in opens 24 hours before departure.
We will email you a reminder.</p><a class="button" id="back" href="/travel/trip/{ref}">Back to the trip</a></div>"""
        return page(self, "Check in", body, _nav(), "trips")

    # ------------------------------------------------------------ dead ends

    async def hotels(self, request: web.Request, ep, message: str = "") -> web.Response:
        body = f"""<h1>Hotels</h1>{banner(message, "ok")}<div class="card narrow"><p>SkyWay hotels are coming later this year.
Leave your email and we will tell you when they launch.</p><form method="post" action="/travel/hotels" autocomplete="off">
{text_input("alert-email", "Email", name="email")}
<div class="actions"><button class="primary" id="notify">Notify me</button></div></form></div>"""
        return page(self, "Hotels", body, _nav(), "hotels")

    async def hotels_post(self, request: web.Request, ep) -> web.Response:
        field(await request.post(), "email")
        ep.world["alerts"] += 1
        return await self.hotels(request, ep, "Thanks, we will be in touch.")

    async def help(self, request: web.Request, ep) -> web.Response:
        faq = [("Can I change my flight?", "Yes, from My trips: choose Change flight. You pay any fare difference."),
               ("Can I cancel?", "Yes. Choose a refund to your card or travel credit worth 10% more."),
               ("How much luggage can I bring?", "One cabin bag is included. Checked bags cost £30 (one) or £55 (two)."),
               ("When does check-in open?", "24 hours before departure."),
               ("What is SkyWay Plus?", "A yearly membership with priority boarding. Sign-ups open soon.")]
        items = "".join(f"<li><b>{esc(q)}</b><br><span class='muted'>{esc(a)}</span></li>" for q, a in faq)
        return page(self, "Help", f'<h1>Help centre</h1><div class="card"><ul class="faq">{items}</ul></div>', _nav(), "help")

    async def signin(self, request: web.Request, ep, error: str = "") -> web.Response:
        body = f"""<h1>Sign in</h1>{banner(error)}<form class="card narrow" method="post" action="/travel/signin" autocomplete="off">
{text_input("signin-email", "Email", name="email")}
{text_input("signin-password", "Password", name="password", type_="password")}
<div class="actions"><button class="primary" id="signin-submit">Sign in</button></div></form>"""
        return page(self, "Sign in", body, _nav(), "signin")

    async def signin_post(self, request: web.Request, ep) -> web.Response:
        field(await request.post(), "email")
        return await self.signin(request, ep, "Incorrect email or password.")


# ---------------------------------------------------------------- templates


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return f"{first} {last}", f"{first.lower()}.{last.lower()}@{rng.choice(DOMAINS)}"


def _mine(world, status: str = "Confirmed") -> list[dict[str, Any]]:
    return [world["bookings"][r] for r in world["seed_refs"]
            if world["bookings"][r]["mine"] and world["bookings"][r]["status"] == status]


def _route_with_nonstop(world, rng: random.Random, frm: str | None = None, to: str | None = None, avoid: str = ""):
    while True:
        a, b = (frm, to) if frm else rng.sample(sorted(CITIES), 2)
        day = _random_day(rng, dt.date(2026, 5, 1), dt.date(2026, 8, 31))
        nonstop = [f for f in flights(world, a, b, day) if f["stops"] == 0]
        if nonstop and day != avoid:
            return a, b, day, nonstop


class BookFlight(Template):
    name = "travel/book-flight"
    optimal_steps = 13

    def goal(self, world, rng):
        frm, to, day, nonstop = _route_with_nonstop(world, rng)
        target = min(nonstop, key=lambda f: f["price"])
        name, email = _person(rng)
        seat, bags = rng.choice(sorted(SEAT_PHRASE)), rng.choice(sorted(BAG_PHRASE))
        text = (f"Book the cheapest nonstop flight from {CITIES[frm]} to {CITIES[to]} on {long_date(day)} for {name} "
                f"({email}), with {SEAT_PHRASE[seat]} and {BAG_PHRASE[bags]}.")
        return Goal(text, "/", {"frm": CITIES[frm], "to": CITIES[to], "date": day, "key": target["key"],
                                "no": target["no"], "name": name, "email": email, "seat": seat, "bags": bags})

    def check(self, world, goal):
        g = goal.params
        return any(r not in world["seed_refs"] and b["status"] == "Confirmed" and b["key"] == g["key"]
                   and normalise(b["name"]) == normalise(g["name"]) and normalise(b["email"]) == normalise(g["email"])
                   and b["seat"] == g["seat"] and b["bags"] == g["bags"]
                   for r, b in world["bookings"].items())

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("type", {"id": "from"}, g["frm"]),
                PlanStep("type", {"id": "to"}, g["to"]),
                PlanStep("type", {"id": "date"}, g["date"], enter=True),
                PlanStep("click", {"id": "filter-nonstop"}),
                PlanStep("click", {"id": "sort-price"}),
                PlanStep("click", {"id": f"select-{g['no']}"}),
                PlanStep("type", {"id": "pax-name"}, g["name"]),
                PlanStep("type", {"id": "pax-email"}, g["email"]),
                PlanStep("click", {"id": "to-extras"}),
                PlanStep("click", {"id": f"seat-{g['seat']}"}),
                PlanStep("click", {"id": f"bags-{g['bags']}"}),
                PlanStep("click", {"id": "to-review"}),
                PlanStep("click", {"id": "confirm-booking"})]


class TerminalLookup(Template):
    name = "travel/terminal-lookup"
    optimal_steps = 3

    def goal(self, world, rng):
        b = rng.choice(_mine(world))
        f = flight_by_key(world, b["key"])
        return Goal(f"Which terminal does {b['name']}'s flight to {CITIES[f['to']]} leave from? "
                    "Answer like 'Terminal 1'.", "/", {"ref": b["ref"]}, answer=f"Terminal {b['terminal']}")

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "nav-trips"}), PlanStep("click", {"id": f"trip-{goal.params['ref']}"}),
                PlanStep("answer", text=goal.answer)]


class CheapestFare(Template):
    name = "travel/cheapest-fare"
    optimal_steps = 5

    def goal(self, world, rng):
        frm, to = rng.sample(sorted(CITIES), 2)
        day = _random_day(rng, dt.date(2026, 5, 1), dt.date(2026, 9, 15))
        cheapest = min(f["price"] for f in flights(world, frm, to, day))
        return Goal(f"What is the lowest fare for a flight from {CITIES[frm]} to {CITIES[to]} on {long_date(day)}? "
                    "Answer with the price in pounds.", "/", {"frm": CITIES[frm], "to": CITIES[to], "date": day},
                    answer=f"£{cheapest}")

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("type", {"id": "from"}, g["frm"]),
                PlanStep("type", {"id": "to"}, g["to"]),
                PlanStep("type", {"id": "date"}, g["date"], enter=True),
                PlanStep("click", {"id": "sort-price"}),
                PlanStep("answer", text=goal.answer)]


class CancelTrip(Template):
    name = "travel/cancel-trip"
    optimal_steps = 5
    ood = True

    def goal(self, world, rng):
        b = rng.choice(_mine(world))
        f = flight_by_key(world, b["key"])
        statuses = {r: x["status"] for r, x in world["bookings"].items()}
        return Goal(f"{b['name']} can no longer travel to {CITIES[f['to']]} on {long_date(f['date'])}. Cancel that trip "
                    "and take the refund as travel credit.", "/", {"ref": b["ref"], "statuses": statuses})

    def check(self, world, goal):
        ref, bookings = goal.params["ref"], world["bookings"]
        return (bookings[ref]["refund"] == "credit"
                and all(r in bookings and bookings[r]["status"] == ("Cancelled" if r == ref else s)
                        for r, s in goal.params["statuses"].items()))

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "nav-trips"}), PlanStep("click", {"id": f"trip-{goal.params['ref']}"}),
                PlanStep("click", {"id": "cancel-booking"}), PlanStep("click", {"id": "refund-credit"}),
                PlanStep("click", {"id": "confirm-cancel"})]


class ChangeFlight(Template):
    name = "travel/change-flight"
    optimal_steps = 9

    def goal(self, world, rng):
        b = rng.choice([world["bookings"][r] for r in world["seed_refs"] if not world["bookings"][r]["mine"]])
        f = flight_by_key(world, b["key"])
        _, _, day, nonstop = _route_with_nonstop(world, rng, f["frm"], f["to"], avoid=f["date"])
        target = nonstop[0]
        seat = rng.choice(sorted(SEAT_PHRASE))
        last = b["name"].split(" ", 1)[1]
        text = (f"Your colleague {b['name']} booked a flight from {CITIES[f['frm']]} to {CITIES[f['to']]} without your "
                f"account (booking reference {b['ref']}). Move it to the earliest nonstop flight on {long_date(day)}, "
                f"with {SEAT_PHRASE[seat]} on the new flight.")
        return Goal(text, "/", {"ref": b["ref"], "last": last, "date": day, "key": target["key"], "no": target["no"],
                                "seat": seat})

    def check(self, world, goal):
        b = world["bookings"].get(goal.params["ref"])
        return b is not None and b["status"] == "Confirmed" and b["key"] == goal.params["key"] and b["seat"] == goal.params["seat"]

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "nav-trips"}),
                PlanStep("type", {"id": "lookup-ref"}, g["ref"]),
                PlanStep("type", {"id": "lookup-name"}, g["last"], enter=True),
                PlanStep("click", {"id": "change-flight"}),
                PlanStep("type", {"id": "change-date"}, g["date"], enter=True),
                PlanStep("click", {"id": "filter-nonstop"}),
                PlanStep("click", {"id": f"choose-{g['no']}"}),
                PlanStep("click", {"id": f"seat-{g['seat']}"}),
                PlanStep("click", {"id": "confirm-change"})]


SITE = TravelSite
