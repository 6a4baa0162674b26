"""Report: a long, filterable and sortable sales ledger with row pages, notes, flags and saved views.

The page that needs reading and scrolling: 80-96 seeded sales rows of a fixed
height (``ROW_HEIGHT``, fixed in the CSS), summary cards that follow the filters,
filter chips (region, month, status), sort links per column, a row detail page
(flag, note, mark as paid, refund), saved views, and dead ends (export, forecasts).
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import banner, esc, hidden, table, text_input

REGIONS = ["North", "South", "East", "West", "Central"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun"]
MONTH_NAMES = {"Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April", "May": "May", "Jun": "June"}
STATUSES = ["Paid", "Pending", "Overdue", "Refunded"]
STATUS_WEIGHTS = [55, 20, 15, 10]
PRODUCTS = {
    "Trail Backpack": 89.0, "Smart Thermostat": 149.0, "Desk Lamp Pro": 59.5, "Noise-Cancelling Headset": 229.0,
    "Ergo Chair": 389.0, "4K Monitor": 319.0, "Espresso Machine": 449.0, "Standing Desk": 529.0,
}
CUSTOMERS = ["Acme Logistics", "Birchwood Dental", "Copperline Studio", "Delta Freight", "Evergreen Schools",
             "Fjord Analytics", "Granite Legal", "Harbourview Hotel", "Ironbark Gyms", "Juniper Clinics",
             "Kestrel Air", "Lumen Labs"]
REPS = ["Ada Okafor", "Bruno Silva", "Chiara Moreau", "Dmitri Novak", "Elena Tanaka", "Farid Haddad"]
COLUMNS = ["invoice", "date", "region", "product", "units", "revenue", "status"]
LABELS = {"invoice": "Invoice", "date": "Date", "region": "Region", "product": "Product", "units": "Units",
          "revenue": "Revenue", "status": "Status"}
VISIBILITY = {"private": "Only me", "team": "My team", "public": "Everyone"}

# Layout the scrolling task relies on (CSS in static/style.css, block /* report */): every ledger row
# is ROW_HEIGHT px and the first data row's top lies FIRST_ROW_Y px from the top of the report page.
ROW_HEIGHT = 40
FIRST_ROW_Y = 489
VIEWPORT = 720
MARGIN = 120  # a looked-up row sits at least this far inside the viewport after scrolling


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _nav(ep) -> list[tuple[str, str, str]]:
    n = len(ep.world["flagged"])
    return [("report", "Sales report", "/report/"), ("views", "Saved views", "/report/views"),
            ("flagged", f"Flagged ({n})", "/report/flagged"), ("forecast", "Forecasts", "/report/forecast"),
            ("settings", "Settings", "/report/settings")]


def _state(query: Any) -> tuple[dict[str, str], bool]:
    """The report's view state from a query or form: validated filters and sort; bad values dropped (flagged)."""
    state = {"region": field(query, "region"), "month": field(query, "month"), "status": field(query, "status"),
             "sort": field(query, "sort") or "date", "dir": field(query, "dir") or "asc"}
    bad = False
    for key, allowed in (("region", REGIONS), ("month", MONTHS), ("status", STATUSES)):
        if state[key] and state[key] not in allowed:
            state[key], bad = "", True
    if state["sort"] not in COLUMNS:
        state["sort"], bad = "date", True
    if state["dir"] not in ("asc", "desc"):
        state["dir"], bad = "asc", True
    return state, bad


def _qs(state: dict[str, str], **change: str) -> str:
    merged = {**state, **change}
    keep = {k: merged[k] for k in ("region", "month", "status") if merged.get(k)}
    if (merged.get("sort"), merged.get("dir")) != ("date", "asc"):
        keep["sort"], keep["dir"] = merged.get("sort", "date"), merged.get("dir", "asc")
    return urlencode(keep)


def _describe(state: dict[str, str]) -> str:
    parts = [state["region"] or "All regions", MONTH_NAMES.get(state["month"], "Jan–Jun 2024"),
             state["status"] or "any status"]
    return " · ".join(parts) + f" · sorted by {LABELS[state['sort']].lower()} ({'high→low' if state['dir'] == 'desc' else 'low→high'})"


def _rows(world: dict[str, Any], state: dict[str, str]) -> list[dict[str, Any]]:
    rows = [r for r in world["rows"].values()
            if (not state["region"] or r["region"] == state["region"])
            and (not state["month"] or r["month"] == state["month"])
            and (not state["status"] or r["status"] == state["status"])]
    key = {"invoice": lambda r: r["id"], "date": lambda r: (r["date"], r["id"])}.get(
        state["sort"], lambda r: (r[state["sort"]], r["id"]))
    return sorted(rows, key=key, reverse=state["dir"] == "desc")


def _date(r: dict[str, Any]) -> str:
    return f"{int(r['date'][8:]):d} {r['month']} 2024"


class ReportSite(Site):
    name = "report"
    title = "Ledger Analytics"

    def __init__(self) -> None:
        self.templates = [RegionRevenue(), InvoiceLookup(), FlagRefunds(), SaveView(), ReconcileOverdue()]

    def world(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(80, 96)
        dates = sorted(f"2024-{rng.randint(1, 6):02d}-{rng.randint(1, 28):02d}" for _ in range(n))
        first = rng.randint(1040, 4800)
        rows = {}
        for i, date in enumerate(dates):
            rid = f"INV-{first + i}"
            product = rng.choice(sorted(PRODUCTS))
            units = rng.randint(1, 40)
            discount = rng.choice([0, 0, 0, 5, 10, 15])
            rows[rid] = {
                "id": rid, "date": date, "month": MONTHS[int(date[5:7]) - 1], "region": rng.choice(REGIONS),
                "product": product, "units": units,
                "revenue": round(units * PRODUCTS[product] * (100 - discount) / 100, 2),
                "status": rng.choices(STATUSES, STATUS_WEIGHTS)[0], "customer": rng.choice(CUSTOMERS),
                "rep": rng.choice(REPS), "discount": discount, "notes": [],
            }
        overdue = [rid for rid in rows if rows[rid]["status"] == "Overdue"]
        flagged = set(rng.sample(overdue, min(2, len(overdue))))
        views = [
            {"name": "Weekly overview", "state": {"region": "", "month": "", "status": "", "sort": "date", "dir": "desc"},
             "visibility": "team", "owner": "Chiara Moreau"},
            {"name": f"{rng.choice(REGIONS)} overdue", "state": {"region": rng.choice(REGIONS), "month": "",
             "status": "Overdue", "sort": "revenue", "dir": "desc"}, "visibility": "private", "owner": "You"},
        ]
        return {"rows": rows, "flagged": flagged, "views": views, "exports": 0}

    def routes(self):
        return [
            ("GET", "/", self.report),
            ("POST", "/flag", self.flag_from_table),
            ("GET", "/row/{rid}", self.row),
            ("POST", "/row/{rid}/flag", self.row_flag),
            ("POST", "/row/{rid}/note", self.row_note),
            ("POST", "/row/{rid}/status", self.row_status),
            ("GET", "/views", self.views),
            ("GET", "/views/new", self.view_form),
            ("POST", "/views", self.view_save),
            ("GET", "/flagged", self.flagged),
            ("GET", "/export", self.export),
            ("GET", "/forecast", self.forecast),
            ("GET", "/settings", self.settings),
        ]

    # ---------------------------------------------------------------- report

    async def report(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        state, bad = _state(request.query)
        rows = _rows(w, state)
        revenue = sum(r["revenue"] for r in rows)
        units = sum(r["units"] for r in rows)
        refunded = sum(r["revenue"] for r in rows if r["status"] == "Refunded")
        avg = revenue / len(rows) if rows else 0.0
        cards = "".join(
            f'<div class="rp-card"><span class="label">{label}</span><span class="value" id="card-{key}">{value}</span></div>'
            for key, label, value in (("revenue", "Total revenue", _money(revenue)), ("units", "Units sold", f"{units:,}"),
                                      ("sales", "Sales", str(len(rows))), ("average", "Average sale", _money(avg)),
                                      ("refunded", "Refunded", _money(refunded)))
        )

        def chips(key: str, values: list[str], labels: dict[str, str] | None = None) -> str:
            out = f'<a class="chip{" active" if not state[key] else ""}" id="{key}-all" href="/report/?{_qs(state, **{key: ""})}">All</a>'
            for v in values:
                out += (f'<a class="chip{" active" if state[key] == v else ""}" id="{key}-{v.lower()}" '
                        f'href="/report/?{_qs(state, **{key: v})}">{esc((labels or {}).get(v, v))}</a>')
            return out

        head = ""
        for col in COLUMNS:
            on = state["sort"] == col
            nxt = "desc" if on and state["dir"] == "asc" else "asc"
            arrow = (" ▲" if state["dir"] == "asc" else " ▼") if on else ""
            head += (f'<th class="c-{col}"><a id="sort-{col}" href="/report/?{_qs(state, sort=col, dir=nxt)}">'
                     f'{LABELS[col]}{arrow}</a></th>')
        head += '<th class="c-actions">Actions</th>'
        back = _qs(state)
        body_rows = ""
        for r in rows:
            flagged = r["id"] in w["flagged"]
            body_rows += (
                f'<tr class="{"flagged" if flagged else ""}"><td class="c-invoice"><a id="open-{r["id"]}" '
                f'href="/report/row/{r["id"]}?{back}">{r["id"]}</a>{" ⚑" if flagged else ""}</td>'
                f'<td>{_date(r)}</td><td>{r["region"]}</td><td>{esc(r["product"])}</td><td class="num">{r["units"]}</td>'
                f'<td class="num">{_money(r["revenue"])}</td><td><span class="status {r["status"].lower()}">{r["status"]}</span></td>'
                f'<td><form action="/report/flag" method="post">{hidden({"rid": r["id"]})}{hidden(state)}'
                f'<button class="flag" id="flag-{r["id"]}">{"Unflag" if flagged else "Flag"}</button></form></td></tr>'
            )
        if not rows:
            body_rows = '<tr><td colspan="8" class="muted">No sales match these filters.</td></tr>'
        notice = banner("Some filters in the address were not recognised and were ignored." if bad else "")
        body = f"""{notice}<div class="rp-title"><div><h1>Sales report H1 2024</h1>
<p class="muted">{esc(_describe(state))}</p></div>
<div class="rp-actions"><a class="button" id="export" href="/report/export?{back}">Export CSV</a>
<a class="button primary" id="save-view" href="/report/views/new?{back}">Save view</a></div></div>
<div class="rp-cards">{cards}</div>
<div class="rp-filters"><div class="line"><span class="k">Region</span>{chips("region", REGIONS)}</div>
<div class="line"><span class="k">Month</span>{chips("month", MONTHS)}</div>
<div class="line"><span class="k">Status</span>{chips("status", STATUSES)}</div></div>
<div class="rp-toolbar"><span class="muted">{len(rows)} of {len(w["rows"])} sales · figures in USD, excl. tax</span>
<span class="muted rp-tip">Tip: click a column header to sort; click again to reverse.</span></div>
<table class="ledger"><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table>
<div class="rp-end muted">End of report · generated from the H1 2024 ledger · {len(w["rows"])} sales in total</div>"""
        return page(self, "Sales report", body, _nav(ep), "report")

    async def flag_from_table(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        state, _ = _state(form)
        self._toggle(ep, field(form, "rid"))
        return redirect(f"/report/?{_qs(state)}")

    @staticmethod
    def _toggle(ep, rid: str) -> None:
        if rid in ep.world["rows"]:
            ep.world["flagged"] ^= {rid}

    # ---------------------------------------------------------------- row detail

    async def row(self, request: web.Request, ep, error: str = "") -> web.Response:
        r = ep.world["rows"].get(request.match_info["rid"])
        state, _ = _state(request.query)
        if r is None:
            return page(self, "Not found", '<h1>Sale not found</h1><a id="back" href="/report/">Back to report</a>', _nav(ep))
        flagged = r["id"] in ep.world["flagged"]
        back = _qs(state)
        notes = "".join(f"<li>{esc(n)}</li>" for n in r["notes"]) or '<li class="muted">No notes yet.</li>'
        pay = (f'<button class="primary" id="mark-paid" name="new_status" value="Paid">Mark as paid</button>'
               if r["status"] in ("Pending", "Overdue") else "")
        refund = ('<button class="danger" id="refund" name="new_status" value="Refunded">Issue refund</button>'
                  if r["status"] != "Refunded" else "")
        facts = "".join(
            f"<tr><th>{k}</th><td>{esc(v)}</td></tr>" for k, v in (
                ("Date", _date(r)), ("Region", r["region"]), ("Customer", r["customer"]), ("Sales rep", r["rep"]),
                ("Product", r["product"]), ("Units", r["units"]), ("Unit price", _money(PRODUCTS[r["product"]])),
                ("Discount", f'{r["discount"]}%'), ("Revenue", _money(r["revenue"])), ("Status", r["status"])))
        body = f"""{banner(error)}<p><a id="back" href="/report/?{back}">← Back to report</a></p>
<div class="row"><div class="card grow"><h1 id="row-title">Invoice {r["id"]}{" ⚑" if flagged else ""}</h1>
<table class="facts">{facts}</table></div>
<div class="sidebar rp-side"><div class="card"><h2>Actions</h2>
<form action="/report/row/{r["id"]}/flag" method="post">{hidden(state)}
<button id="flag-toggle">{"Remove flag" if flagged else "Flag row"}</button></form>
<form action="/report/row/{r["id"]}/status" method="post" class="rp-status">{hidden(state)}{pay}{refund}</form>
<a class="button" id="row-export" href="/report/export?{back}">Export PDF</a></div></div></div>
<div class="card"><h2>Notes</h2><ul id="notes">{notes}</ul>
<form action="/report/row/{r["id"]}/note" method="post">{hidden(state)}
<input type="text" id="note" name="note" placeholder="Add a note for the finance team" style="width:70%">
<button id="add-note">Add note</button></form></div>"""
        return page(self, f"Invoice {r['id']}", body, _nav(ep))

    async def row_flag(self, request: web.Request, ep) -> web.Response:
        state, _ = _state(await request.post())
        self._toggle(ep, request.match_info["rid"])
        return redirect(f"/report/row/{request.match_info['rid']}?{_qs(state)}")

    async def row_note(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        r = ep.world["rows"].get(request.match_info["rid"])
        note = field(form, "note")
        if r is None:
            return await self.row(request, ep)
        if not note:
            return await self.row(request, ep, "Write a note before adding it.")
        if len(r["notes"]) >= 20:
            return await self.row(request, ep, "This sale already has 20 notes.")
        r["notes"].append(note)
        state, _ = _state(form)
        return redirect(f"/report/row/{r['id']}?{_qs(state)}")

    async def row_status(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        r = ep.world["rows"].get(request.match_info["rid"])
        status = field(form, "new_status")
        if r is None:
            return await self.row(request, ep)
        if status == "Paid" and r["status"] in ("Pending", "Overdue"):
            r["status"] = "Paid"
        elif status == "Refunded" and r["status"] != "Refunded":
            r["status"] = "Refunded"
        else:
            return await self.row(request, ep, "That status change is not allowed.")
        state, _ = _state(form)
        return redirect(f"/report/row/{r['id']}?{_qs(state)}")

    # ---------------------------------------------------------------- saved views

    async def views(self, request: web.Request, ep) -> web.Response:
        rows = "".join(
            f'<tr><td><a id="view-{i}" href="/report/?{_qs(v["state"])}">{esc(v["name"])}</a></td>'
            f'<td>{esc(_describe(v["state"]))}</td><td>{VISIBILITY[v["visibility"]]}</td><td>{esc(v["owner"])}</td></tr>'
            for i, v in enumerate(ep.world["views"])
        )
        saved = banner("View saved." if request.query.get("saved") == "1" else "", "ok", "saved")
        body = f"""{saved}<h1>Saved views</h1><p class="muted">Open a view to load its filters and sort order.
To save a new one, set filters on the <a id="to-report" href="/report/">sales report</a> and press “Save view”.</p>
{table(["Name", "Shows", "Shared with", "Owner"], rows)}"""
        return page(self, "Saved views", body, _nav(ep), "views")

    async def view_form(self, request: web.Request, ep, error: str = "", state: dict[str, str] | None = None,
                        name: str = "") -> web.Response:
        if state is None:
            state, bad = _state(request.query)
            error = error or ("Some filters in the address were not recognised and were ignored." if bad else "")
        radios = "".join(
            f'<div><input type="radio" id="vis-{k}" name="visibility" value="{k}"{" checked" if k == "private" else ""}>'
            f' <label class="rp-radio" for="vis-{k}">{label}</label></div>' for k, label in VISIBILITY.items())
        body = f"""{banner(error)}<h1>Save view</h1><form class="card" action="/report/views" method="post" style="max-width:720px">
{hidden(state)}<p>This view shows: <b id="view-summary">{esc(_describe(state))}</b></p>
{text_input("view-name", "View name", name, name="name", attrs=' style="width:80%" maxlength="80"')}
<label>Share with</label>{radios}
<div style="margin-top:16px"><button class="primary" id="save-view-submit">Save view</button>
<a class="button" id="cancel" href="/report/?{_qs(state)}">Cancel</a></div></form>"""
        return page(self, "Save view", body, _nav(ep), "views")

    async def view_save(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        state, bad = _state(form)
        name = field(form, "name")[:80]
        if bad:
            return await self.view_form(request, ep, "Some filters of this view were not recognised.", state, name)
        visibility = field(form, "visibility", "private")
        if not name:
            return await self.view_form(request, ep, "Give the view a name.", state)
        if visibility not in VISIBILITY:
            return await self.view_form(request, ep, "Choose who can see the view.", state, name)
        if any(normalise(v["name"]) == normalise(name) for v in ep.world["views"]):
            return await self.view_form(request, ep, f'A view named "{name}" already exists.', state, name)
        if len(ep.world["views"]) >= 50:
            return await self.view_form(request, ep, "You have reached the limit of 50 saved views.", state, name)
        ep.world["views"].append({"name": name, "state": state, "visibility": visibility, "owner": "You"})
        return redirect("/report/views?saved=1")

    # ---------------------------------------------------------------- other pages

    async def flagged(self, request: web.Request, ep) -> web.Response:
        rows = "".join(
            f'<tr><td><a id="open-{r["id"]}" href="/report/row/{r["id"]}">{r["id"]}</a></td><td>{_date(r)}</td>'
            f'<td>{r["region"]}</td><td>{esc(r["product"])}</td><td>{_money(r["revenue"])}</td><td>{r["status"]}</td></tr>'
            for r in sorted((ep.world["rows"][rid] for rid in ep.world["flagged"]), key=lambda r: r["id"]))
        body = "<h1>Flagged sales</h1>" + (
            table(["Invoice", "Date", "Region", "Product", "Revenue", "Status"], rows)
            if rows else '<div class="card">No flagged sales.</div>')
        return page(self, "Flagged", body, _nav(ep), "flagged")

    async def export(self, request: web.Request, ep) -> web.Response:
        ep.world["exports"] += 1
        state, _ = _state(request.query)
        body = f"""<h1>Export</h1><div class="card"><p id="export-status">Your export is being prepared. Large exports are
e-mailed to you within 24 hours; nothing else changes in the report.</p>
<p class="muted">Job #{1000 + ep.world["exports"]} · {esc(_describe(state))}</p>
<a class="button" id="back" href="/report/?{_qs(state)}">Back to report</a></div>"""
        return page(self, "Export", body, _nav(ep))

    async def forecast(self, request: web.Request, ep) -> web.Response:
        bars = "".join(f'<div class="rp-bar" style="height:{40 + 20 * i}px"><span>{m}</span></div>'
                       for i, m in enumerate(["Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]))
        body = f"""<h1>Forecasts</h1><div class="card"><p>Forecasts for H2 2024 are computed overnight.
The model has not been trained for this workspace yet.</p><div class="rp-bars">{bars}</div>
<button id="retrain" disabled>Retrain model (admin only)</button></div>"""
        return page(self, "Forecasts", body, _nav(ep), "forecast")

    async def settings(self, request: web.Request, ep) -> web.Response:
        body = """<h1>Settings</h1><div class="card"><p>Workspace settings are managed by your administrator.</p>
<p class="muted">Currency: USD · Fiscal year starts in January · Time zone: UTC</p>
<a class="button" id="contact-admin" href="/report/settings">Contact administrator</a></div>"""
        return page(self, "Settings", body, _nav(ep), "settings")


# -------------------------------------------------------------------- templates


def _force(world: dict[str, Any], rng: random.Random, match, pool, count: int, make: str, unmake: str) -> list[str]:
    """Make exactly ``count`` rows satisfy ``match`` (by changing statuses), return their ids, sorted."""
    hits = sorted(rid for rid, r in world["rows"].items() if match(r))
    rng.shuffle(hits)
    for rid in hits[count:]:
        world["rows"][rid]["status"] = unmake
    hits = hits[:count]
    spare = sorted(rid for rid, r in world["rows"].items() if pool(r) and rid not in hits)
    for rid in rng.sample(spare, count - len(hits)) if len(hits) < count else []:
        world["rows"][rid]["status"] = make
        hits.append(rid)
    return sorted(hits)


class RegionRevenue(Template):
    name = "report/region-revenue"
    optimal_steps = 2

    def goal(self, world, rng):
        region = rng.choice(REGIONS)
        total = sum(r["revenue"] for r in world["rows"].values() if r["region"] == region)
        return Goal(f"What is the total revenue of the {region} region in the H1 2024 sales report? "
                    "Answer with the amount.", "/", {"region": region}, answer=_money(total))

    def plan(self, goal, world):
        return [PlanStep("click", {"id": f"region-{goal.params['region'].lower()}"}), PlanStep("answer", text=goal.answer)]


class InvoiceLookup(Template):
    """Read one row far down the unfiltered ledger (sorted by date): three scrolls down."""

    name = "report/invoice-lookup"
    optimal_steps = 4
    SCROLLS = 3

    def goal(self, world, rng):
        order = _rows(world, _state({})[0])
        top = self.SCROLLS * VIEWPORT
        fits = [r for i, r in enumerate(order)
                if top + MARGIN <= FIRST_ROW_Y + i * ROW_HEIGHT and FIRST_ROW_Y + (i + 1) * ROW_HEIGHT <= top + VIEWPORT - MARGIN]
        ask = rng.choice(["revenue", "units"])
        r = rng.choice([r for r in fits if ask == "revenue" or r["units"] >= 3])  # "2" is a random agent's word
        if ask == "revenue":
            text, answer = f"What was the revenue of invoice {r['id']}? Answer with the amount.", _money(r["revenue"])
        else:
            text, answer = f"How many units were sold on invoice {r['id']}? Answer with the number.", str(r["units"])
        return Goal(text, "/", {"rid": r["id"], "ask": ask}, answer=answer)

    def plan(self, goal, world):
        return [PlanStep("scroll")] * self.SCROLLS + [PlanStep("answer", text=goal.answer)]


class FlagRefunds(Template):
    name = "report/flag-refunds"
    optimal_steps = 5
    ood = True

    def goal(self, world, rng):
        free = lambda r: r["id"] not in world["flagged"] and r["status"] in ("Paid", "Refunded")  # noqa: E731
        month = rng.choice([m for m in MONTHS if sum(free(r) and r["month"] == m for r in world["rows"].values()) >= 5])
        targets = _force(world, rng, lambda r: r["month"] == month and r["status"] == "Refunded",
                         lambda r: r["month"] == month and free(r), 3, "Refunded", "Paid")
        return Goal(f"Flag every refunded sale from {MONTH_NAMES[month]} 2024 in the sales report, "
                    "and leave all other rows as they are.", "/",
                    {"month": month, "targets": targets, "before": sorted(world["flagged"])})

    def check(self, world, goal):
        return world["flagged"] == set(goal.params["before"]) | set(goal.params["targets"])

    def plan(self, goal, world):
        return ([PlanStep("click", {"id": f"month-{goal.params['month'].lower()}"}),
                 PlanStep("click", {"id": "status-refunded"})]
                + [PlanStep("click", {"id": f"flag-{rid}"}) for rid in goal.params["targets"]])


class SaveView(Template):
    name = "report/save-view"
    optimal_steps = 9

    def goal(self, world, rng):
        region, month, status = rng.choice(REGIONS), rng.choice(MONTHS), rng.choice(["Pending", "Overdue", "Refunded"])
        name = f"{region} {status.lower()} {MONTH_NAMES[month]} – {rng.choice(['review', 'follow-up', 'audit', 'board pack'])}"
        return Goal(f'Save a view named "{name}" that shows only {status} sales in the {region} region in '
                    f"{MONTH_NAMES[month]}, sorted by revenue from highest to lowest, and share it with your team.", "/",
                    {"name": name, "state": {"region": region, "month": month, "status": status,
                                             "sort": "revenue", "dir": "desc"}})

    def check(self, world, goal):
        return any(normalise(v["name"]) == normalise(goal.params["name"]) and v["state"] == goal.params["state"]
                   and v["visibility"] == "team" for v in world["views"])

    def plan(self, goal, world):
        s = goal.params["state"]
        return [PlanStep("click", {"id": f"region-{s['region'].lower()}"}),
                PlanStep("click", {"id": f"month-{s['month'].lower()}"}),
                PlanStep("click", {"id": f"status-{s['status'].lower()}"}),
                PlanStep("click", {"id": "sort-revenue"}),
                PlanStep("click", {"id": "sort-revenue"}),
                PlanStep("click", {"id": "save-view"}),
                PlanStep("type", {"id": "view-name"}, goal.params["name"]),
                PlanStep("click", {"id": "vis-team"}),
                PlanStep("click", {"id": "save-view-submit"})]


class ReconcileOverdue(Template):
    name = "report/reconcile-overdue"
    optimal_steps = 9

    def goal(self, world, rng):
        region = rng.choice([g for g in REGIONS if sum(r["region"] == g for r in world["rows"].values()) >= 6])
        targets = _force(world, rng, lambda r: r["region"] == region and r["status"] == "Overdue",
                         lambda r: r["region"] == region and r["status"] in ("Paid", "Pending"), 2, "Overdue", "Pending")
        note = f"Paid by bank transfer, ref {rng.randint(100000, 999999)}"
        return Goal(f"The customers have paid every overdue sale in the {region} region. Mark each of those sales "
                    f'as paid and add the note "{note}" to each of them. Change nothing else.', "/",
                    {"region": region, "targets": targets, "note": note,
                     "statuses": {rid: r["status"] for rid, r in world["rows"].items()}})

    def check(self, world, goal):
        g = goal.params
        for rid, r in world["rows"].items():
            want = "Paid" if rid in g["targets"] else g["statuses"][rid]
            if r["status"] != want:
                return False
        return all(any(normalise(n) == normalise(g["note"]) for n in world["rows"][rid]["notes"]) for rid in g["targets"])

    def plan(self, goal, world):
        g = goal.params
        steps = [PlanStep("click", {"id": f"region-{g['region'].lower()}"}), PlanStep("click", {"id": "status-overdue"})]
        for i, rid in enumerate(g["targets"]):
            steps += [PlanStep("click", {"id": f"open-{rid}"}), PlanStep("type", {"id": "note"}, g["note"], enter=True),
                      PlanStep("click", {"id": "mark-paid"})]
            if i + 1 < len(g["targets"]):
                steps.append(PlanStep("click", {"id": "back"}))
        return steps


SITE = ReportSite
