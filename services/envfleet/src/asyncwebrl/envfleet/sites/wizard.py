"""Wizard: a home-insurance application in four form steps plus a confirmation.

Each step is validated on the server (required fields, YYYY-MM-DD dates, UK-style
postcodes, age and start-date ranges) and re-rendered with an error banner when a
value is wrong. Applications can be saved as drafts, resumed, withdrawn and
reapplied for from "My applications"; the seeded world holds other applicants'
drafts and decisions for the tasks to refer to.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import NO_AUTOCOMPLETE, banner, esc, links, option, pill, table, text_input

TODAY = dt.date(2026, 3, 2)
LATEST_START = TODAY + dt.timedelta(days=180)
FIRST = ["Amara", "Benedikt", "Carys", "Declan", "Esme", "Fintan", "Greta", "Hamza", "Isla", "Joaquin",
         "Kezia", "Lorcan", "Maren", "Niamh", "Oskar", "Priya"]
LAST = ["Ashdown", "Blackwood", "Carrington", "Dunmore", "Ellery", "Fairbairn", "Gillespie", "Hartley",
        "Iverson", "Jarvis", "Kilbride", "Lockhart"]
STREETS = ["Orchard Close", "Quarry Lane", "Beacon Road", "Willow Crescent", "Abbey Street", "Fenwick Terrace",
           "Marsh Lane", "Cedar Grove"]
CITIES = {"Leeds": "LS", "Brighton": "BN", "Exeter": "EX", "Cambridge": "CB", "York": "YO", "Norwich": "NR"}
DOMAINS = ["mailbox.co.uk", "postfast.net", "inbox.uk"]
LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
PLANS = {"basic": ("Basic", 14.50, "Buildings & contents up to £50,000"),
         "standard": ("Standard", 21.90, "Up to £120,000, new-for-old replacement"),
         "premium": ("Premium", 34.00, "Up to £250,000, alternative accommodation")}
EXCESSES = {"100": 3.00, "250": 0.0, "500": -2.50}
ADDONS = {"accidental": ("Accidental damage", 4.20), "legal": ("Legal expenses", 2.10),
          "emergency": ("Home emergency", 3.40)}
STEPS = ["Personal details", "Address", "Cover options", "Review", "Confirmation"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
FIELDS = ("name", "dob", "email", "phone", "street", "city", "postcode", "plan", "excess", "addons", "start")


def long_date(iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def parse_date(text: str) -> dt.date | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def clean_postcode(text: str) -> str | None:
    compact = re.sub(r"\s+", "", text.upper())
    if not re.fullmatch(r"[A-Z]{1,2}\d{1,2}\d[A-Z]{2}", compact):
        return None
    return f"{compact[:-3]} {compact[-3:]}"


def premium(app: dict[str, Any]) -> float | None:
    if app.get("plan") not in PLANS or app.get("excess") not in EXCESSES:
        return None
    return round(PLANS[app["plan"]][1] + EXCESSES[app["excess"]] + sum(ADDONS[a][1] for a in app["addons"]), 2)


def money(value: float | None) -> str:
    return "—" if value is None else f"£{value:.2f}"


def _random_date(rng: random.Random, start: dt.date, end: dt.date) -> str:
    return (start + dt.timedelta(days=rng.randint(0, (end - start).days))).isoformat()


def _postcode(rng: random.Random, city: str) -> str:
    return f"{CITIES[city]}{rng.randint(1, 19)} {rng.randint(1, 9)}{rng.choice(LETTERS)}{rng.choice(LETTERS)}"


def _address(rng: random.Random) -> dict[str, str]:
    city = rng.choice(sorted(CITIES))
    return {"street": f"{rng.randint(2, 120)} {rng.choice(STREETS)}", "city": city, "postcode": _postcode(rng, city)}


def _person(rng: random.Random, name: str) -> dict[str, Any]:
    first, last = name.split(" ", 1)
    return {"name": name, "dob": _random_date(rng, dt.date(1955, 1, 1), dt.date(2003, 12, 31)),
            "email": f"{first.lower()}.{last.lower()}@{rng.choice(DOMAINS)}", "phone": "", **_address(rng)}


def _nav():
    return [("home", "Home", "/wizard/"), ("apply", "New quote", "/wizard/apply/new"),
            ("applications", "My applications", "/wizard/applications"), ("help", "Help", "/wizard/help")]


def _banner(errors: list[str], kind: str = "error") -> str:
    if len(errors) <= 1:
        return banner(errors[0] if errors else "", kind)
    items = "".join(f"<li>{esc(e)}</li>" for e in errors)
    return banner(f'Please fix the following:<ul class="errors">{items}</ul>', kind, markup=True)


def validate(step: int, app: dict[str, Any]) -> list[str]:
    errors = []
    if step == 1:
        if not re.fullmatch(r"[A-Za-zÀ-ÿ' -]{2,60}", app["name"]) or " " not in app["name"].strip():
            errors.append("Enter your first and last name.")
        born = parse_date(app["dob"])
        if born is None:
            errors.append("Date of birth must be a real date in the format YYYY-MM-DD.")
        elif not 18 <= (TODAY - born).days // 365.25 <= 100:
            errors.append("Applicants must be between 18 and 100 years old.")
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", app["email"]):
            errors.append("Enter a valid email address, like name@example.com.")
        if app["phone"] and not re.fullmatch(r"[0-9 +()-]{7,20}", app["phone"]):
            errors.append("Phone numbers may only contain digits, spaces and + ( ) -.")
    elif step == 2:
        if len(app["street"]) < 3:
            errors.append("Enter the house number and street.")
        if len(app["city"]) < 2:
            errors.append("Enter the town or city.")
        if clean_postcode(app["postcode"]) is None:
            errors.append("Enter a valid UK postcode, like LS6 2QT.")
    elif step == 3:
        if app["plan"] not in PLANS:
            errors.append("Choose a plan.")
        if app["excess"] not in EXCESSES:
            errors.append("Choose an excess.")
        start = parse_date(app["start"])
        if start is None:
            errors.append("Cover start date must be a real date in the format YYYY-MM-DD.")
        elif not TODAY < start <= LATEST_START:
            errors.append(f"Cover must start after {TODAY.isoformat()} and no later than {LATEST_START.isoformat()}.")
    return errors


class WizardSite(Site):
    name = "wizard"
    title = "ApplyWell"

    def __init__(self) -> None:
        self.templates = [NewApplication(), PremiumLookup(), WithdrawApplication(), FinishDraft(), ReapplyDeclined()]

    def world(self, rng: random.Random) -> dict[str, Any]:
        names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], 8)
        statuses = ["Draft", "Draft", "Submitted", "Submitted", "Approved", "Approved", "Declined", "Declined"]
        rng.shuffle(statuses)
        apps, refs = {}, set()
        for name, status in zip(names, statuses):
            ref = f"AW-{rng.randint(10000, 49999)}"
            while ref in refs:
                ref = f"AW-{rng.randint(10000, 49999)}"
            refs.add(ref)
            app = {"ref": ref, "status": status, **_person(rng, name),
                   "updated": _random_date(rng, dt.date(2026, 1, 5), TODAY - dt.timedelta(days=1))}
            if status == "Draft":
                app.update(plan="", excess="", addons=[], start="", step=3)
            else:
                pool = sorted(ADDONS) if status != "Declined" else ["accidental", "legal"]
                app.update(plan=rng.choice(sorted(PLANS)), excess=rng.choice(sorted(EXCESSES)),
                           addons=sorted(rng.sample(pool, rng.randint(0, 2))), step=4,
                           start=_random_date(rng, TODAY + dt.timedelta(days=8), TODAY + dt.timedelta(days=170)))
            apps[ref] = app
        return {"apps": apps, "seed_refs": sorted(apps), "current": None, "next_ref": rng.randint(60000, 69999),
                "callbacks": 0}

    def routes(self):
        return [
            ("GET", "/", self.home),
            ("GET", "/plans", self.plans),
            ("GET", "/help", self.help),
            ("GET", "/advisor", self.advisor),
            ("POST", "/advisor", self.advisor_post),
            ("GET", "/apply/new", self.apply_new),
            ("GET", "/apply/done/{ref}", self.done),
            ("GET", "/apply/{step}", self.step_get),
            ("POST", "/apply/{step}", self.step_post),
            ("GET", "/applications", self.applications),
            ("GET", "/application/{ref}", self.application),
            ("GET", "/application/{ref}/resume", self.resume),
            ("GET", "/application/{ref}/reapply", self.reapply),
            ("GET", "/application/{ref}/withdraw", self.withdraw_form),
            ("POST", "/application/{ref}/withdraw", self.withdraw),
            ("POST", "/application/{ref}/delete", self.delete),
            ("GET", "/application/{ref}/appeal", self.appeal),
        ]

    # ------------------------------------------------------------ static pages

    async def home(self, request: web.Request, ep) -> web.Response:
        tiles = "".join(
            f'<div class="tile"><h3>{esc(label)}</h3><div class="price">from £{cost - 2.5:.2f}/month</div>'
            f'<p class="muted">{esc(blurb)}</p></div>'
            for label, cost, blurb in PLANS.values()
        )
        drafts = sum(a["status"] == "Draft" for a in ep.world["apps"].values())
        body = f"""
<div class="row"><div class="grow"><div class="card hero">
<h1>Home insurance in five minutes</h1>
<p>Tell us about yourself and your home, pick your cover and get an instant monthly price.
No phone calls, no paperwork.</p>
<a class="button primary" id="start-quote" href="/wizard/apply/new">Start a new quote</a>
<a class="button" id="resume-link" href="/wizard/applications">Continue a saved application ({drafts})</a>
<a class="button" id="compare" href="/wizard/plans">Compare plans</a></div>
<div class="grid grid3">{tiles}</div>
<div class="card how"><h3>How it works</h3><ol class="how-steps"><li>Tell us who you are</li><li>Add your address</li>
<li>Choose a plan, excess and add-ons</li><li>Review and submit: we reply within two working days</li></ol></div></div>
<div class="sidebar"><div class="card"><h3>Need a hand?</h3><p class="muted">Our advisors answer
Monday to Friday, 9am–5pm.</p><a class="button" id="advisor" href="/wizard/advisor">Request a callback</a></div>
<div class="ad" id="car-ad"><b>Car insurance is coming soon.</b><br>
<a id="car-waitlist" href="/wizard/help#car">Join the waiting list</a></div></div></div>"""
        return page(self, "Home insurance", body, _nav(), "home")

    async def plans(self, request: web.Request, ep) -> web.Response:
        rows = "".join(f"<tr><td>{esc(label)}</td><td>£{cost:.2f}</td><td>{esc(blurb)}</td></tr>"
                       for label, cost, blurb in PLANS.values())
        addons = "".join(f"<tr><td>{esc(label)}</td><td>+£{cost:.2f}</td><td>Optional add-on</td></tr>"
                         for label, cost in ADDONS.values())
        body = f"""<h1>Compare plans</h1>{table(["Plan", "Monthly price (£250 excess)", "What's covered"], rows + addons)}
<p class="muted">A £100 excess adds £3.00 a month; a £500 excess saves £2.50 a month.</p>"""
        return page(self, "Compare plans", body, _nav())

    async def help(self, request: web.Request, ep) -> web.Response:
        faq = [("How long does an application take?", "Most people finish in under five minutes."),
               ("Can I save and come back later?", "Yes: use Save and exit on any step; drafts appear under My applications."),
               ("What is an excess?", "The part of each claim you pay yourself. A higher excess lowers your premium."),
               ("When will I hear back?", "Submitted applications are reviewed within two working days."),
               ("Do you offer car insurance?", "Not yet. Car insurance is planned for later this year.")]
        items = "".join(f"<li><b>{esc(q)}</b><br><span class='muted'>{esc(a)}</span></li>" for q, a in faq)
        body = f'<h1>Help centre</h1><div class="card"><ul class="faq">{items}</ul></div>'
        return page(self, "Help", body, _nav(), "help")

    async def advisor(self, request: web.Request, ep, message: list[str] | None = None, ok: bool = False) -> web.Response:
        body = f"""<h1>Request a callback</h1>{_banner(message or [], "ok" if ok else "error")}
<form class="card narrow" method="post" action="/wizard/advisor">
{text_input("cb-name", "Your name", name="name", attrs=NO_AUTOCOMPLETE)}
{text_input("cb-phone", "Phone number", name="phone", attrs=NO_AUTOCOMPLETE)}
<p class="muted">An advisor will call you within two working days. Callbacks do not start an application.</p>
<button class="primary" id="cb-submit">Request callback</button></form>"""
        return page(self, "Request a callback", body, _nav())

    async def advisor_post(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        if not field(form, "name") or not re.fullmatch(r"[0-9 +()-]{7,20}", field(form, "phone")):
            return await self.advisor(request, ep, ["Enter your name and a valid phone number."])
        ep.world["callbacks"] += 1
        return await self.advisor(request, ep, ["Thanks, we will call you back."], ok=True)

    # ------------------------------------------------------------ the wizard

    def _current(self, ep) -> dict[str, Any]:
        if ep.world["current"] is None:
            ep.world["current"] = {k: ([] if k == "addons" else "") for k in FIELDS} | {"reached": 1, "ref": ""}
        return ep.world["current"]

    async def apply_new(self, request: web.Request, ep) -> web.Response:
        ep.world["current"] = None
        self._current(ep)
        return redirect("/wizard/apply/1")

    def _stepper(self, step: int) -> str:
        items = "".join(
            f'<li class="{"done" if i < step else "now" if i == step else ""}"><b>{i}</b> {esc(label)}</li>'
            for i, label in enumerate(STEPS, 1)
        )
        return f'<ol class="stepper">{items}</ol>'

    def _input(self, key: str, label: str, value: str, hint: str = "", placeholder: str = "") -> str:
        hint_html = f'<div class="hint">{esc(hint)}</div>' if hint else ""
        return f'<div>{text_input(key, label, value, placeholder=placeholder, attrs=NO_AUTOCOMPLETE)}{hint_html}</div>'

    def _step_body(self, ep, step: int, errors: list[str]) -> str:
        cur = self._current(ep)
        back = "/wizard/" if step == 1 else f"/wizard/apply/{step - 1}"
        resumed = f' <span class="muted">· draft {esc(cur["ref"])}</span>' if cur.get("ref") else ""
        if step == 1:
            inner = (self._input("name", "Full name", cur["name"], placeholder="First and last name")
                     + self._input("dob", "Date of birth", cur["dob"], "Format YYYY-MM-DD, e.g. 1985-07-21", "YYYY-MM-DD")
                     + self._input("email", "Email address", cur["email"], placeholder="name@example.com")
                     + self._input("phone", "Phone number (optional)", cur["phone"]))
            inner = f'<div class="form-grid">{inner}</div>'
            next_label = "Next: Address"
        elif step == 2:
            inner = (self._input("street", "House number and street", cur["street"], placeholder="e.g. 12 High Street")
                     + self._input("city", "Town or city", cur["city"])
                     + self._input("postcode", "Postcode", cur["postcode"], "UK format, e.g. LS6 2QT", "e.g. LS6 2QT"))
            inner = f'<div class="form-grid">{inner}</div><p class="muted">We only insure homes in England and Wales.</p>'
            next_label = "Next: Cover options"
        elif step == 3:
            plans = "".join(
                option("radio", f"plan-{k}", "plan", f'<span><b>{esc(label)}</b> £{cost:.2f}/month<br>'
                       f'<span class="muted">{esc(blurb)}</span></span>', value=k, checked=cur["plan"] == k,
                       cls="choice", sep="")
                for k, (label, cost, blurb) in PLANS.items()
            )
            excesses = "".join(
                option("radio", f"excess-{k}", "excess", f"£{k}", value=k, checked=cur["excess"] == k) for k in EXCESSES
            )
            addons = "".join(
                option("checkbox", f"addon-{k}", f"addon-{k}", f"{esc(label)} (+£{cost:.2f})", value="yes",
                       checked=k in cur["addons"])
                for k, (label, cost) in ADDONS.items()
            )
            inner = (f'<div class="fieldset-label">Plan</div><div class="choices">{plans}</div>'
                     f'<div class="form-grid"><div><div class="fieldset-label">Excess per claim</div>'
                     f'<div class="opts">{excesses}</div></div>'
                     + self._input("start", "Cover start date", cur["start"], "Format YYYY-MM-DD", "YYYY-MM-DD")
                     + f'</div><div class="fieldset-label">Optional add-ons</div><div class="opts">{addons}</div>')
            next_label = "Next: Review"
        else:
            addons = ", ".join(ADDONS[a][0] for a in cur["addons"]) or "None"
            plan = PLANS[cur["plan"]][0] if cur["plan"] in PLANS else "—"
            excess = f"£{cur['excess']}" if cur["excess"] in EXCESSES else "—"
            inner = f"""<div class="row"><div class="grow review">
<h3>Personal details <a id="edit-1" href="/wizard/apply/1">Edit</a></h3>
<table><tr><td>Name</td><td>{esc(cur["name"])}</td></tr><tr><td>Date of birth</td><td>{esc(cur["dob"])}</td></tr>
<tr><td>Email</td><td>{esc(cur["email"])}</td></tr></table>
<h3>Address <a id="edit-2" href="/wizard/apply/2">Edit</a></h3>
<table><tr><td>Address</td><td>{esc(cur["street"])}, {esc(cur["city"])}</td></tr>
<tr><td>Postcode</td><td>{esc(cur["postcode"])}</td></tr></table></div>
<div class="grow review"><h3>Cover <a id="edit-3" href="/wizard/apply/3">Edit</a></h3>
<table><tr><td>Plan</td><td>{esc(plan)}</td></tr><tr><td>Excess</td><td>{esc(excess)}</td></tr>
<tr><td>Add-ons</td><td>{esc(addons)}</td></tr><tr><td>Starts</td><td>{esc(cur["start"])}</td></tr>
<tr><td>Monthly premium</td><td class="price" id="premium">{money(premium(cur))}</td></tr></table></div></div>
{option("checkbox", "confirm", "confirm", "I confirm the details above are correct and I accept the policy terms.",
        value="yes", cls="opt confirm")}"""
            next_label = "Submit application"
        return f"""<h1>Apply for home insurance{resumed}</h1>{self._stepper(step)}{_banner(errors)}
<form class="card wizard-form" method="post" action="/wizard/apply/{step}">
<h2>Step {step} of 4 · {esc(STEPS[step - 1])}</h2>{inner}
<div class="actions"><a class="button" id="back" href="{back}">{"Cancel" if step == 1 else "Back"}</a>
<button class="primary" id="{"submit" if step == 4 else "next"}" name="action" value="next">{esc(next_label)}</button>
<button id="save-exit" name="action" value="save">Save and exit</button></div></form>"""

    def _step_of(self, request: web.Request) -> int:
        try:
            step = int(request.match_info["step"])
        except ValueError:
            return 0
        return step if 1 <= step <= 4 else 0

    async def step_get(self, request: web.Request, ep) -> web.Response:
        step = self._step_of(request)
        cur = self._current(ep)
        if not step or step > cur["reached"]:
            return redirect(f"/wizard/apply/{cur['reached']}")
        return page(self, STEPS[step - 1], self._step_body(ep, step, []), _nav(), "apply")

    async def step_post(self, request: web.Request, ep) -> web.Response:
        step = self._step_of(request)
        cur = self._current(ep)
        if not step or step > cur["reached"]:
            return redirect(f"/wizard/apply/{cur['reached']}")
        form = await request.post()
        if step == 1:
            cur.update({k: field(form, k) for k in ("name", "dob", "email", "phone")})
        elif step == 2:
            cur.update({k: field(form, k) for k in ("street", "city", "postcode")})
            cur["postcode"] = clean_postcode(cur["postcode"]) or cur["postcode"]
        elif step == 3:
            cur.update({k: field(form, k) for k in ("plan", "excess", "start")})
            cur["addons"] = [k for k in ADDONS if field(form, f"addon-{k}") == "yes"]
        if field(form, "action") == "save":
            return redirect(f"/wizard/applications?saved={self._store(ep, 'Draft', step)}")
        if step < 4:
            errors = validate(step, cur)
            if errors:
                return page(self, STEPS[step - 1], self._step_body(ep, step, errors), _nav(), "apply")
            cur["reached"] = max(cur["reached"], step + 1)
            return redirect(f"/wizard/apply/{step + 1}")
        for earlier in (1, 2, 3):
            if validate(earlier, cur):
                return page(self, STEPS[3], self._step_body(
                    ep, 4, [f"Step {earlier} ({STEPS[earlier - 1]}) has missing or invalid answers: edit it first."]),
                    _nav(), "apply")
        if field(form, "confirm") != "yes":
            return page(self, STEPS[3], self._step_body(ep, 4, ["Tick the box to confirm your details before submitting."]),
                        _nav(), "apply")
        return redirect(f"/wizard/apply/done/{self._store(ep, 'Submitted', 4)}")

    def _store(self, ep, status: str, step: int) -> str:
        """Files the application in progress (a resumed draft keeps its reference) and clears it."""
        w = ep.world
        cur = w["current"]
        ref = cur.get("ref") or ""
        if ref not in w["apps"]:
            ref = f"AW-{w['next_ref']}"
            w["next_ref"] += 1
        app = {k: (list(cur[k]) if k == "addons" else cur[k]) for k in FIELDS}
        w["apps"][ref] = app | {"ref": ref, "status": status, "step": max(1, min(step, cur["reached"])),
                                "updated": TODAY.isoformat()}
        w["current"] = None
        return ref

    async def done(self, request: web.Request, ep) -> web.Response:
        app = ep.world["apps"].get(request.match_info["ref"])
        if app is None or app["status"] == "Draft":
            return page(self, "Not found", '<h1>Application not found</h1>', _nav())
        body = f"""<h1>Application submitted</h1>{self._stepper(5)}
<div class="card hero">{banner(f"Thank you, {app['name']}. We have received your application.", "ok")}
<p>Your reference number is <b id="reference">{esc(app["ref"])}</b>. Keep it for your records.</p>
<p>Quoted monthly premium: <span class="price">{money(premium(app))}</span>. We will email {esc(app["email"])} within
two working days.</p>
<a class="button primary" id="view-applications" href="/wizard/applications">View my applications</a>
<a class="button" id="home-link" href="/wizard/">Back to home</a></div>"""
        return page(self, "Submitted", body, _nav())

    # ------------------------------------------------------------ saved applications

    async def applications(self, request: web.Request, ep) -> web.Response:
        tab = field(request.query, "status")
        groups = {"": None, "drafts": {"Draft"}, "open": {"Submitted"}, "decided": {"Approved", "Declined", "Withdrawn"}}
        wanted = groups.get(tab)
        saved = field(request.query, "saved")
        notice = banner(f"Saved as draft {saved}. You can continue it at any time." if saved else "", "ok")
        tabs = links([(key or "all", label, f'/wizard/applications{"?status=" + key if key else ""}') for key, label in (
            ("", "All"), ("drafts", "Drafts"), ("open", "Under review"), ("decided", "Decided"))], tab or "all", "tab-")
        apps = sorted(ep.world["apps"].values(), key=lambda a: (a["updated"], a["ref"]), reverse=True)
        rows = "".join(
            f'<tr><td><a id="app-{esc(a["ref"])}" href="/wizard/application/{esc(a["ref"])}">{esc(a["ref"])}</a></td>'
            f'<td>{esc(a["name"])}</td><td>{esc(PLANS[a["plan"]][0] if a["plan"] in PLANS else "Not chosen")}</td>'
            f'<td>{pill(a["status"])}</td><td>{esc(a["updated"])}</td><td>'
            + (f'<a class="button small" id="resume-{esc(a["ref"])}" href="/wizard/application/{esc(a["ref"])}/resume">Continue</a>'
               if a["status"] == "Draft" else
               f'<a class="button small" href="/wizard/application/{esc(a["ref"])}">View</a>')
            + "</td></tr>"
            for a in apps if wanted is None or a["status"] in wanted
        ) or '<tr><td colspan="6" class="muted">No applications here.</td></tr>'
        body = f"""<h1>My applications</h1>{notice}<div class="tabs">{tabs}</div>
{table(["Reference", "Applicant", "Plan", "Status", "Last updated", ""], rows)}
<p class="muted">Decisions are usually made within two working days of submission.</p>"""
        return page(self, "My applications", body, _nav(), "applications")

    async def application(self, request: web.Request, ep) -> web.Response:
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is None:
            return page(self, "Not found", '<h1>Application not found</h1><a href="/wizard/applications">Back</a>', _nav())
        ref = esc(a["ref"])
        actions = {
            "Draft": f'<a class="button primary" id="resume" href="/wizard/application/{ref}/resume">Continue application</a>'
                     f'<form method="post" action="/wizard/application/{ref}/delete" class="inline">'
                     f'<button class="danger" id="delete-draft">Delete draft</button></form>',
            "Submitted": f'<a class="button danger" id="withdraw" href="/wizard/application/{ref}/withdraw">Withdraw application</a>',
            "Approved": '<a class="button" id="download-policy" href="/wizard/help">Download policy (PDF)</a>'
                        '<a class="button" id="make-claim" href="/wizard/help">Make a claim</a>',
            "Declined": f'<a class="button primary" id="reapply" href="/wizard/application/{ref}/reapply">Reapply with these details</a>'
                        f'<a class="button" id="appeal" href="/wizard/application/{ref}/appeal">Appeal the decision</a>',
            "Withdrawn": f'<a class="button" id="reapply" href="/wizard/application/{ref}/reapply">Start again with these details</a>',
        }[a["status"]]
        addons = ", ".join(ADDONS[k][0] for k in a["addons"]) or "None"
        note = {"Declined": "We could not verify the address on this application.",
                "Approved": "Your policy documents have been emailed to you.",
                "Submitted": "Under review: we will email you within two working days.",
                "Draft": f"Saved at step {a['step']} of 4.", "Withdrawn": "You withdrew this application."}[a["status"]]
        body = f"""<h1>Application {ref} {pill(a["status"])}</h1>
<div class="row"><div class="card grow"><h3>Applicant</h3><table>
<tr><td>Name</td><td>{esc(a["name"])}</td></tr><tr><td>Date of birth</td><td>{esc(a["dob"] or "—")}</td></tr>
<tr><td>Email</td><td>{esc(a["email"])}</td></tr>
<tr><td>Address</td><td>{esc(a["street"])}, {esc(a["city"])} {esc(a["postcode"])}</td></tr></table></div>
<div class="card grow"><h3>Cover</h3><table>
<tr><td>Plan</td><td>{esc(PLANS[a["plan"]][0] if a["plan"] in PLANS else "Not chosen")}</td></tr>
<tr><td>Excess</td><td>{esc("£" + a["excess"] if a["excess"] else "—")}</td></tr>
<tr><td>Add-ons</td><td>{esc(addons)}</td></tr><tr><td>Cover starts</td><td>{esc(a["start"] or "—")}</td></tr>
<tr><td>Monthly premium</td><td class="price" id="premium">{money(premium(a))}</td></tr></table></div></div>
<div class="card"><p>{esc(note)}</p><div class="actions">{actions}
<a class="button" id="back-to-list" href="/wizard/applications">Back to my applications</a></div></div>"""
        return page(self, f"Application {a['ref']}", body, _nav(), "applications")

    async def resume(self, request: web.Request, ep) -> web.Response:
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is None or a["status"] != "Draft":
            return redirect("/wizard/applications")
        ep.world["current"] = {k: (list(a[k]) if k == "addons" else a[k]) for k in FIELDS} | {
            "reached": a["step"], "ref": a["ref"]}
        return redirect(f"/wizard/apply/{a['step']}")

    async def reapply(self, request: web.Request, ep) -> web.Response:
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is None or a["status"] not in ("Declined", "Withdrawn"):
            return redirect("/wizard/applications")
        ep.world["current"] = {k: (list(a[k]) if k == "addons" else a[k]) for k in FIELDS} | {"reached": 1, "ref": ""}
        return redirect("/wizard/apply/1")

    async def withdraw_form(self, request: web.Request, ep) -> web.Response:
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is None or a["status"] != "Submitted":
            return redirect("/wizard/applications")
        ref = esc(a["ref"])
        reasons = "".join(
            option("radio", f"reason-{k}", "reason", label, value=k)
            for k, label in (("price", "I found a cheaper quote"), ("moved", "I am moving home"), ("other", "Another reason"))
        )
        body = f"""<h1>Withdraw application {ref}?</h1><form class="card narrow" method="post" action="/wizard/application/{ref}/withdraw">
<p>Withdrawing stops the review of {esc(a["name"])}'s application. This cannot be undone.</p>
<div class="fieldset-label">Reason (optional)</div><div class="opts stacked">{reasons}</div>
<div class="actions"><button class="danger" id="confirm-withdraw">Yes, withdraw application</button>
<a class="button" id="keep-application" href="/wizard/application/{ref}">No, keep it</a></div></form>"""
        return page(self, "Withdraw", body, _nav(), "applications")

    async def withdraw(self, request: web.Request, ep) -> web.Response:
        await request.post()
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is not None and a["status"] == "Submitted":
            a["status"] = "Withdrawn"
            a["updated"] = TODAY.isoformat()
            return redirect(f"/wizard/application/{a['ref']}")
        return redirect("/wizard/applications")

    async def delete(self, request: web.Request, ep) -> web.Response:
        await request.post()
        a = ep.world["apps"].get(request.match_info["ref"])
        if a is not None and a["status"] == "Draft":
            del ep.world["apps"][a["ref"]]
        return redirect("/wizard/applications")

    async def appeal(self, request: web.Request, ep) -> web.Response:
        ref = esc(field(request.match_info, "ref"))
        body = f"""<h1>Appeal a decision</h1><div class="card narrow"><p>Appeals for application {ref} are handled by our
underwriting team by post. Please write to ApplyWell Appeals, PO Box 4120, Leeds LS1 9ZZ, quoting your reference.</p>
<a class="button" id="appeal-back" href="/wizard/application/{ref}">Back to the application</a></div>"""
        return page(self, "Appeal", body, _nav(), "applications")


# ---------------------------------------------------------------- templates


def _apps(world, status: str) -> list[dict[str, Any]]:
    return [world["apps"][r] for r in world["seed_refs"] if world["apps"][r]["status"] == status]


def _new_apps(world) -> list[dict[str, Any]]:
    return [a for r, a in world["apps"].items() if r not in world["seed_refs"] and a["status"] == "Submitted"]


def _same(a: dict[str, Any], want: dict[str, Any]) -> bool:
    for key, value in want.items():
        if key in ("addons",):
            if sorted(a[key]) != sorted(value):
                return False
        elif key == "postcode":
            if (clean_postcode(a[key]) or a[key]) != value:
                return False
        elif normalise(str(a[key])) != normalise(str(value)):
            return False
    return True


class NewApplication(Template):
    name = "wizard/new-application"
    optimal_steps = 16

    def goal(self, world, rng):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        want = _person(rng, f"{first} {last}")
        del want["phone"]
        want |= {"plan": rng.choice(sorted(PLANS)), "excess": rng.choice(sorted(EXCESSES)),
                 "addons": [rng.choice(sorted(ADDONS))],
                 "start": _random_date(rng, TODAY + dt.timedelta(days=7), TODAY + dt.timedelta(days=120))}
        text = (f"Apply for home insurance for {want['name']}, born on {long_date(want['dob'])}, email {want['email']}, "
                f"who lives at {want['street']}, {want['city']}, postcode {want['postcode']}. Choose the "
                f"{PLANS[want['plan']][0]} plan with a £{want['excess']} excess and {ADDONS[want['addons'][0]][0]} "
                f"cover, starting on {long_date(want['start'])}, and submit the application.")
        return Goal(text, "/", {"want": want})

    def check(self, world, goal):
        return any(_same(a, goal.params["want"]) for a in _new_apps(world))

    def plan(self, goal, world):
        w = goal.params["want"]
        return [PlanStep("click", {"id": "start-quote"}),
                PlanStep("type", {"id": "name"}, w["name"]),
                PlanStep("type", {"id": "dob"}, w["dob"]),
                PlanStep("type", {"id": "email"}, w["email"]),
                PlanStep("click", {"id": "next"}),
                PlanStep("type", {"id": "street"}, w["street"]),
                PlanStep("type", {"id": "city"}, w["city"]),
                PlanStep("type", {"id": "postcode"}, w["postcode"]),
                PlanStep("click", {"id": "next"}),
                PlanStep("click", {"id": f"plan-{w['plan']}"}),
                PlanStep("click", {"id": f"excess-{w['excess']}"}),
                PlanStep("click", {"id": f"addon-{w['addons'][0]}"}),
                PlanStep("type", {"id": "start"}, w["start"]),
                PlanStep("click", {"id": "next"}),
                PlanStep("click", {"id": "confirm"}),
                PlanStep("click", {"id": "submit"})]


class PremiumLookup(Template):
    name = "wizard/premium-lookup"
    optimal_steps = 3

    def goal(self, world, rng):
        app = rng.choice([a for s in ("Submitted", "Approved", "Declined") for a in _apps(world, s)])
        return Goal(f"What monthly premium was quoted on {app['name']}'s home insurance application? "
                    "Answer with the amount in pounds.", "/", {"ref": app["ref"]}, answer=money(premium(app)))

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "nav-applications"}), PlanStep("click", {"id": f"app-{goal.params['ref']}"}),
                PlanStep("answer", text=goal.answer)]


class WithdrawApplication(Template):
    name = "wizard/withdraw-application"
    optimal_steps = 4

    def goal(self, world, rng):
        app = rng.choice(_apps(world, "Submitted"))
        statuses = {r: world["apps"][r]["status"] for r in world["seed_refs"]}
        return Goal(f"{app['name']} has found cheaper insurance elsewhere. Withdraw their application, which is "
                    "still under review.", "/", {"ref": app["ref"], "statuses": statuses})

    def check(self, world, goal):
        apps = world["apps"]
        return all(r in apps and apps[r]["status"] == ("Withdrawn" if r == goal.params["ref"] else s)
                   for r, s in goal.params["statuses"].items())

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "nav-applications"}), PlanStep("click", {"id": f"app-{goal.params['ref']}"}),
                PlanStep("click", {"id": "withdraw"}), PlanStep("click", {"id": "confirm-withdraw"})]


class FinishDraft(Template):
    name = "wizard/finish-draft"
    optimal_steps = 8
    ood = True

    def goal(self, world, rng):
        app = rng.choice(_apps(world, "Draft"))
        want = {"plan": rng.choice(sorted(PLANS)), "excess": rng.choice(sorted(EXCESSES)), "addons": [],
                "start": _random_date(rng, TODAY + dt.timedelta(days=5), TODAY + dt.timedelta(days=150))}
        text = (f"{app['name']} saved a home insurance application as a draft without choosing any cover. Finish it: "
                f"choose the {PLANS[want['plan']][0]} plan with a £{want['excess']} excess and no add-ons, with cover "
                f"starting on {long_date(want['start'])}, then submit it.")
        return Goal(text, "/", {"ref": app["ref"], "want": want})

    def check(self, world, goal):
        a = world["apps"].get(goal.params["ref"])
        return a is not None and a["status"] == "Submitted" and _same(a, goal.params["want"])

    def plan(self, goal, world):
        w = goal.params["want"]
        return [PlanStep("click", {"id": "nav-applications"}),
                PlanStep("click", {"id": f"resume-{goal.params['ref']}"}),
                PlanStep("click", {"id": f"plan-{w['plan']}"}),
                PlanStep("click", {"id": f"excess-{w['excess']}"}),
                PlanStep("type", {"id": "start"}, w["start"]),
                PlanStep("click", {"id": "next"}),
                PlanStep("click", {"id": "confirm"}),
                PlanStep("click", {"id": "submit"})]


class ReapplyDeclined(Template):
    name = "wizard/reapply-declined"
    optimal_steps = 12

    def goal(self, world, rng):
        old = rng.choice(_apps(world, "Declined"))
        address = _address(rng)
        while address["city"] == old["city"]:
            address = _address(rng)
        want = {k: old[k] for k in ("name", "dob", "email", "plan", "excess", "start")} | address
        want["addons"] = sorted(old["addons"] + ["emergency"])
        text = (f"{old['name']}'s home insurance application was declined because the address on it was out of date. "
                f"Reapply with the same personal details and cover, but with the new address {address['street']}, "
                f"{address['city']}, postcode {address['postcode']}, and also add Home emergency cover.")
        return Goal(text, "/", {"ref": old["ref"], "want": want})

    def check(self, world, goal):
        return any(_same(a, goal.params["want"]) for a in _new_apps(world))

    def plan(self, goal, world):
        w = goal.params["want"]
        return [PlanStep("click", {"id": "nav-applications"}),
                PlanStep("click", {"id": f"app-{goal.params['ref']}"}),
                PlanStep("click", {"id": "reapply"}),
                PlanStep("click", {"id": "next"}),
                PlanStep("type", {"id": "street"}, w["street"]),
                PlanStep("type", {"id": "city"}, w["city"]),
                PlanStep("type", {"id": "postcode"}, w["postcode"]),
                PlanStep("click", {"id": "next"}),
                PlanStep("click", {"id": "addon-emergency"}),
                PlanStep("click", {"id": "next"}),
                PlanStep("click", {"id": "confirm"}),
                PlanStep("click", {"id": "submit"})]


SITE = WizardSite
