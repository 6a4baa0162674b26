"""Admin console ("Console"): a sidebar of sections and sub-pages, tabs within pages.

Members (list, search, add, change role, deactivate), account settings (profile,
security, sessions), notifications (email, Slack), billing (plan and seats,
invoices, payment), API keys (create, revoke) and a read-only audit log. Dead ends:
Teams and Webhooks need a bigger plan, Export buttons only queue a job.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import NO_AUTOCOMPLETE, banner, esc, hidden, links, option, pill, table, text_input

ORG, DOMAIN = "Lumen Labs", "lumenlabs.io"
ME = "Jordan Avery"
ROLES = ["Owner", "Admin", "Editor", "Viewer", "Billing"]
ASSIGNABLE = ["Admin", "Editor", "Viewer", "Billing"]
ROLE_HELP = {"Admin": "Manage members, settings and keys", "Editor": "Create and edit projects",
             "Viewer": "Read-only access", "Billing": "Invoices and payment only"}
FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Tomas", "Yara", "Wen", "Uma", "Viktor", "Sofia"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Keller", "Brandt", "Costa",
        "Dubois", "Ferreira", "Ibsen", "Jansen", "Kowalski", "Larsen"]
KEY_NAMES = ["ci-deploy", "analytics-export", "zapier-sync", "backup-job", "mobile-app", "data-warehouse",
             "status-page", "staging-tests", "crm-import", "slack-bot"]
SCOPES = {"read": "Read only", "write": "Read & write", "admin": "Full admin"}
EXPIRY = {"30": "30 days", "90": "90 days", "365": "1 year", "never": "Never"}
PLANS = {"starter": ("Starter", 8), "team": ("Team", 15), "business": ("Business", 25), "enterprise": ("Enterprise", 0)}
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
USERS_PER_PAGE, AUDIT_PER_PAGE = 8, 10

SECURITY = [("two_factor", "two-factor", "Require two-factor authentication for all members"),
            ("password_login", "password-login", "Allow sign-in with email and password"),
            ("sso_enforce", "sso-enforce", "Require single sign-on (SSO)"),
            ("ip_allowlist", "ip-allowlist", "Restrict API access to allow-listed IP addresses")]
TIMEOUTS = [("15m", "15 minutes"), ("1h", "1 hour"), ("8h", "8 hours"), ("24h", "24 hours")]
EVENTS = [("weekly", "Weekly usage summary"), ("new_user", "A new member joins"), ("billing", "Billing and invoice alerts"),
          ("security", "Security alerts"), ("product", "Product news and tips")]
DIGESTS = [("instant", "Immediately"), ("daily", "Daily digest"), ("weekly", "Weekly digest")]
LANGS = [("en", "English"), ("de", "Deutsch"), ("fr", "Français"), ("es", "Español")]
# Dates count back from Mar 20 2025; minutes since then (negative).
DAYS_IN = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def _date(ts: int) -> str:
    days, minute = (-ts) // 1440 + (1 if ts % 1440 else 0), ts % 1440
    day, month = 20 - days, 2
    while day < 1:
        month = (month - 1) % 12
        day += DAYS_IN[month]
    return f"{MONTHS[month]} {day}, {minute // 60:02d}:{minute % 60:02d}"


def _day(ts: int) -> str:
    return _date(ts).split(",")[0]


def _ts(days: int, rng: random.Random) -> int:
    return -days * 1440 + rng.randint(8 * 60, 18 * 60)


def _email(first: str, last: str, rng: random.Random) -> str:
    return rng.choice(["{f}.{l}", "{f}", "{fi}{l}", "{f}{li}"]).format(
        f=first.lower(), l=last.lower(), fi=first[0].lower(), li=last[0].lower()) + "@" + DOMAIN


def _nav() -> list[tuple[str, str, str]]:
    return [("overview", "Overview", "/admin/"), ("users", "Members", "/admin/users"),
            ("settings", "Settings", "/admin/settings/profile"), ("billing", "Billing", "/admin/billing/plan"),
            ("developers", "Developers", "/admin/api-keys"), ("help", "Help", "/admin/help")]


SIDEBAR = [
    ("Organization", [("overview", "Overview", "/admin/"), ("users", "Members", "/admin/users"),
                      ("teams", "Teams", "/admin/teams"), ("audit", "Audit log", "/admin/audit")]),
    ("Account", [("profile", "Profile", "/admin/settings/profile"), ("security", "Security", "/admin/settings/security"),
                 ("notifications", "Notifications", "/admin/notifications/email")]),
    ("Billing", [("plan", "Plan & seats", "/admin/billing/plan"), ("invoices", "Invoices", "/admin/billing/invoices"),
                 ("payment", "Payment method", "/admin/billing/payment")]),
    ("Developers", [("api-keys", "API keys", "/admin/api-keys"), ("webhooks", "Webhooks", "/admin/webhooks")]),
]
SECTION_OF = {key: (section, label) for section, items in SIDEBAR for key, label, _ in items}
NAV_OF = {"overview": "overview", "users": "users", "teams": "users", "audit": "users", "profile": "settings",
          "security": "settings", "notifications": "settings", "plan": "billing", "invoices": "billing",
          "payment": "billing", "api-keys": "developers", "webhooks": "developers", "help": "help"}


def _banner(ok: str = "", error: str = "") -> str:
    return banner(error) if error else banner(ok, "ok", "notice")


def _tabs(items: list[tuple[str, str, str]], active: str) -> str:
    return '<div class="tabs cn-tabs">' + links(items, active, "tab-") + "</div>"


def _check(id_: str, name: str, label: str, on: bool) -> str:
    return option("checkbox", id_, name, esc(label), checked=on, cls="cn-check")


def _radios(group: str, name: str, options: list[tuple[str, str]], value: str) -> str:
    return '<div class="cn-radios">' + "".join(
        option("radio", f"{group}-{key}", name, esc(label), value=key, checked=key == value, cls="cn-radio")
        for key, label in options) + "</div>"


def _pill(text: str) -> str:
    return pill(text, "cn-pill", "cn-")


class AdminSite(Site):
    name = "admin"
    title = "Console"

    def __init__(self) -> None:
        self.templates = [ToggleSetting(), KeyRevoker(), RevertRoleChange(), OffboardMember(), AddMemberWithSeat()]

    # ------------------------------------------------------------------ world

    def world(self, rng: random.Random) -> dict[str, Any]:
        users: dict[str, dict[str, Any]] = {}
        names = {ME}
        roles = ["Admin"] * 2 + ["Editor"] * 5 + ["Viewer"] * 3 + ["Billing"] * 2
        rng.shuffle(roles)
        people = [(ME, "Owner")]
        firsts = rng.sample(FIRST, len(roles) - 1)
        firsts.append(firsts[1])  # two members share a first name
        for first, role in zip(firsts, roles):
            last = rng.choice(LAST)
            while f"{first} {last}" in names:
                last = rng.choice(LAST)
            names.add(f"{first} {last}")
            people.append((f"{first} {last}", role))
        for i, (name, role) in enumerate(people):
            first, last = name.split()
            uid = f"u{i + 1:02d}"
            users[uid] = {"id": uid, "name": name, "email": "jordan@" + DOMAIN if name == ME else _email(first, last, rng),
                          "role": role, "status": "Active", "last": _day(_ts(rng.randint(0, 12), rng))}
        for uid in rng.sample([u for u in users if users[u]["role"] != "Owner"], 2):
            users[uid]["status"] = "Deactivated"
        active = [u for u in users.values() if u["status"] == "Active"]
        admins = [u["name"] for u in active if u["role"] in ("Owner", "Admin")]

        audit: list[dict[str, Any]] = []

        def log(days: int, actor: str, action: str, target: str) -> None:
            ts = _ts(days, rng)
            audit.append({"ts": ts, "date": _date(ts), "actor": actor, "action": action, "target": target})

        keys: dict[str, dict[str, Any]] = {}
        for i, kname in enumerate(rng.sample(KEY_NAMES, 8)):
            kid = f"k{i + 1:02d}"
            created = rng.randint(45, 200)
            owner = rng.choice(active)
            keys[kid] = {"id": kid, "name": kname, "prefix": f"lk_live_{rng.randrange(16**4):04x}",
                         "scope": rng.choice(list(SCOPES)), "owner": owner["id"], "created": _day(_ts(created, rng)),
                         "last_used": _day(_ts(rng.randint(0, 9), rng)), "status": "Active",
                         "expires": rng.choice(list(EXPIRY))}
            log(created, rng.choice(admins), "Created API key", kname)
        for kid in rng.sample(sorted(keys), 2):
            keys[kid]["status"] = "Revoked"
            keys[kid]["last_used"] = "—"
            # Revoked well before the noise below, so a revocation is never on the log's first page.
            log(rng.randint(18, 40), rng.choice([u["name"] for u in active]), "Revoked API key", keys[kid]["name"])
        for _ in range(14):
            kind = rng.random()
            who = rng.choice(active)["name"]
            days = rng.randint(0, 15)
            if kind < 0.45:
                log(days, who, "Signed in", "Web console")
            elif kind < 0.6:
                log(days, rng.choice(admins), "Updated security settings", "Organization")
            elif kind < 0.8:
                log(days, rng.choice(admins), "Downloaded invoice", f"INV-{rng.randint(2000, 2999)}")
            else:
                log(days, who, "Changed password", who)
        for u in users.values():
            if u["status"] == "Deactivated":
                log(rng.randint(16, 60), ME, "Deactivated member", u["name"])
        invoices = []
        for back in range(6):
            month = (1 - back) % 12
            invoices.append({"no": f"INV-{2100 - back * 17}", "date": f"{MONTHS[(month + 1) % 12]} 1",
                             "period": f"{MONTHS[month]} {2025 if month <= 1 else 2024}",
                             "amount": round(len(active) * 15 * rng.uniform(0.9, 1.1), 2),
                             "status": "Paid" if back else "Due"})
        return {
            "users": users, "keys": keys, "audit": audit, "invoices": invoices, "seats": len(active),
            "plan": "team", "cycle": "monthly",
            "security": {"two_factor": rng.random() < 0.5, "password_login": rng.random() < 0.5,
                         "sso_enforce": rng.random() < 0.5, "ip_allowlist": rng.random() < 0.5,
                         "timeout": rng.choice(TIMEOUTS)[0]},
            "email": {key: rng.random() < 0.5 for key, _ in EVENTS} | {"digest": rng.choice(DIGESTS)[0]},
            "slack": {key: rng.random() < 0.5 for key, _ in EVENTS} | {"digest": rng.choice(DIGESTS)[0]},
            "profile": {"name": ME, "title": "Head of Operations", "lang": "en"},
        }

    # ------------------------------------------------------------------ frame

    def routes(self):
        return [
            ("GET", "/", self.overview),
            ("GET", "/users", self.users),
            ("POST", "/users/export", self.export),
            ("GET", "/users/new", self.new_user),
            ("POST", "/users/new", self.create_user),
            ("GET", "/users/{uid}", self.user),
            ("POST", "/users/{uid}/profile", self.save_user_profile),
            ("POST", "/users/{uid}/role", self.save_role),
            ("POST", "/users/{uid}/reset", self.reset_password),
            ("GET", "/users/{uid}/deactivate", self.confirm_deactivate),
            ("POST", "/users/{uid}/deactivate", self.deactivate),
            ("POST", "/users/{uid}/reactivate", self.reactivate),
            ("GET", "/teams", self.teams),
            ("GET", "/audit", self.audit),
            ("POST", "/audit/export", self.export),
            ("GET", "/settings/{tab}", self.settings),
            ("POST", "/settings/{tab}", self.save_settings),
            ("GET", "/notifications/{tab}", self.notifications),
            ("POST", "/notifications/{tab}", self.save_notifications),
            ("GET", "/billing/plan", self.plan),
            ("POST", "/billing/plan", self.change_plan),
            ("POST", "/billing/seats", self.update_seats),
            ("GET", "/billing/invoices", self.invoices),
            ("GET", "/billing/payment", self.payment),
            ("POST", "/billing/payment", self.payment_update),
            ("GET", "/api-keys", self.api_keys),
            ("GET", "/api-keys/new", self.new_key),
            ("POST", "/api-keys/new", self.create_key),
            ("GET", "/api-keys/{kid}/revoke", self.confirm_revoke),
            ("POST", "/api-keys/{kid}/revoke", self.revoke),
            ("GET", "/webhooks", self.webhooks),
            ("POST", "/webhooks", self.add_webhook),
            ("GET", "/help", self.help),
        ]

    def _frame(self, ep, side: str, heading: str, content: str, actions: str = "") -> web.Response:
        groups = "".join(
            f'<div class="cn-group">{esc(section)}</div>' + links(items, side, "side-") for section, items in SIDEBAR)
        section, label = SECTION_OF.get(side, ("Help", "Help"))
        body = f"""<div class="row cn-shell"><aside class="sidebar cn-side"><div class="cn-org">{esc(ORG)}
<span class="muted">{esc(PLANS[ep.world["plan"]][0])} plan</span></div><nav class="list cn-menu">{groups}</nav></aside>
<section class="grow cn-main"><div class="cn-head"><div><div class="muted cn-crumbs">{esc(section)} › {esc(label)}</div>
<h1>{esc(heading)}</h1></div><div class="cn-head-actions">{actions}</div></div>{content}</section></div>"""
        return page(self, heading, body, _nav(), NAV_OF.get(side, ""))

    def _log(self, ep, action: str, target: str) -> None:
        ts = max(e["ts"] for e in ep.world["audit"]) + 1
        ep.world["audit"].append({"ts": ts, "date": _date(ts), "actor": ME, "action": action, "target": target})

    @staticmethod
    def _members(w: dict[str, Any], status: str = "", q: str = "") -> list[dict[str, Any]]:
        users = sorted(w["users"].values(), key=lambda u: u["name"])
        if status in ("Active", "Deactivated"):
            users = [u for u in users if u["status"] == status]
        if q:
            users = [u for u in users if normalise(q) in normalise(f'{u["name"]} {u["email"]} {u["role"]}')]
        return users

    @staticmethod
    def _events(w: dict[str, Any], q: str = "") -> list[dict[str, Any]]:
        events = sorted(w["audit"], key=lambda e: -e["ts"])
        if q:
            events = [e for e in events if normalise(q) in normalise(f'{e["actor"]} {e["action"]} {e["target"]}')]
        return events

    @staticmethod
    def _page_number(request: web.Request, pages: int) -> int:
        try:
            return max(1, min(pages, int(field(request.query, "p", "1"))))
        except ValueError:
            return 1

    def _pager(self, base: str, params: dict[str, str], number: int, pages: int) -> str:
        def link(n: int, text: str, id_: str) -> str:
            return f'<a class="button cn-pg" id="{id_}" href="{esc(base + "?" + urlencode(params | {"p": str(n)}))}">{text}</a>'
        if pages <= 1:
            return ""
        return ('<div class="cn-pager">' + (link(number - 1, "‹ Previous", "page-prev") if number > 1 else "")
                + "".join(link(n, str(n), f"page-{n}") for n in range(1, pages + 1))
                + (link(number + 1, "Next ›", "page-next") if number < pages else "") + "</div>")

    # ------------------------------------------------------------------ overview and members

    async def overview(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        active = sum(u["status"] == "Active" for u in w["users"].values())
        keys = sum(k["status"] == "Active" for k in w["keys"].values())
        recent = "".join(f'<li><span class="muted">{esc(e["date"])}</span> {esc(e["actor"])} · {esc(e["action"])}</li>'
                         for e in self._events(w)[:5])
        todo = []
        if not w["security"]["two_factor"]:
            todo.append('<li><a id="todo-2fa" href="/admin/settings/security">Turn on two-factor authentication</a></li>')
        todo.append('<li><a id="todo-invoices" href="/admin/billing/invoices">Review your latest invoice</a></li>')
        todo.append('<li><a id="todo-docs" href="/admin/help">Read the admin guide</a></li>')
        content = f"""<div class="cn-stats">
<div class="card"><div class="muted">Active members</div><div class="cn-big">{active}</div></div>
<div class="card"><div class="muted">Seats in use</div><div class="cn-big">{active} / {w["seats"]}</div></div>
<div class="card"><div class="muted">Plan</div><div class="cn-big">{esc(PLANS[w["plan"]][0])}</div></div>
<div class="card"><div class="muted">Active API keys</div><div class="cn-big">{keys}</div></div></div>
<div class="row"><div class="card grow"><h2>Recent activity</h2><ul class="cn-feed">{recent}</ul></div>
<div class="card cn-todo"><h2>Setup checklist</h2><ul>{"".join(todo)}</ul></div></div>"""
        return self._frame(ep, "overview", f"Welcome back, {ME.split()[0]}", content)

    async def users(self, request: web.Request, ep) -> web.Response:
        status = field(request.query, "status")
        q = field(request.query, "q")[:100]
        members = self._members(ep.world, status, q)
        pages = max(1, (len(members) + USERS_PER_PAGE - 1) // USERS_PER_PAGE)
        number = self._page_number(request, pages)
        shown = members[(number - 1) * USERS_PER_PAGE: number * USERS_PER_PAGE]
        rows = "".join(
            f'<tr><td><span class="cn-name">{esc(u["name"])}</span></td><td>{esc(u["email"])}</td><td>{esc(u["role"])}</td>'
            f'<td>{_pill(u["status"])}</td><td class="muted">{esc(u["last"])}</td>'
            f'<td><a id="edit-{u["id"]}" href="/admin/users/{u["id"]}">Manage</a></td></tr>'
            for u in shown) or '<tr><td colspan="6" class="muted">No members match.</td></tr>'
        tabs = _tabs([("all", "All", "/admin/users"), ("active", "Active", "/admin/users?status=Active"),
                      ("deactivated", "Deactivated", "/admin/users?status=Deactivated")],
                     {"Active": "active", "Deactivated": "deactivated"}.get(status, "all"))
        params = {k: v for k, v in (("status", status), ("q", q)) if v}
        notice = {"created": "Member added. An invitation email is on its way.", "export": "Export queued: you will get "
                  "an email with the CSV file when it is ready."}.get(field(request.query, "done"), "")
        content = f"""{_banner(notice)}<form class="cn-toolbar" action="/admin/users" method="get">
{hidden({"status": status if status in ("Active", "Deactivated") else ""})}
<input type="text" id="user-search" name="q" value="{esc(q)}" placeholder="Search by name, email or role" autocomplete="off">
<button id="user-search-button">Search</button></form>{tabs}
{table(["Name", "Email", "Role", "Status", "Last active", ""], rows, "cn-table")}
{self._pager("/admin/users", params, number, pages)}"""
        actions = ('<form method="post" action="/admin/users/export"><button id="export-csv">Export CSV</button></form>'
                   '<a class="button primary" id="add-user" href="/admin/users/new">+ Add member</a>')
        return self._frame(ep, "users", "Members", content, actions)

    async def export(self, request: web.Request, ep) -> web.Response:
        return redirect("/admin/users?done=export")

    def _new_user_form(self, ep, values: dict[str, str], error: str = "") -> web.Response:
        w = ep.world
        active = sum(u["status"] == "Active" for u in w["users"].values())
        content = f"""{_banner(error=error)}<form class="card cn-form" method="post" action="/admin/users/new">
<p class="muted">Seats in use: {active} of {w["seats"]}. New members get an invitation email.</p>
{text_input("new-name", "Full name", values.get("name", ""), name="name", attrs=NO_AUTOCOMPLETE)}
{text_input("new-email", "Work email", values.get("email", ""), name="email", placeholder="name@" + DOMAIN, attrs=NO_AUTOCOMPLETE)}
<label>Role</label>{_radios("role", "role", [(r.lower(), f"{r} · {ROLE_HELP[r]}") for r in ASSIGNABLE], values.get("role", "viewer"))}
{_check("send-invite", "invite", "Send invitation email now", True)}
<div class="cn-buttons"><button class="primary" id="create-user">Add member</button>
<a class="button" id="cancel" href="/admin/users">Cancel</a></div></form>"""
        return self._frame(ep, "users", "Add member", content)

    async def new_user(self, request: web.Request, ep) -> web.Response:
        return self._new_user_form(ep, {})

    async def create_user(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        form = await request.post()
        values = {"name": field(form, "name")[:80], "email": field(form, "email")[:120], "role": field(form, "role", "viewer")}
        role = values["role"].capitalize()
        active = sum(u["status"] == "Active" for u in w["users"].values())
        email = values["email"].lower()
        if not values["name"] or "@" not in email or "." not in email.split("@")[-1] or " " in email:
            return self._new_user_form(ep, values, "Enter a full name and a valid email address.")
        if role not in ASSIGNABLE:
            return self._new_user_form(ep, values, "Choose a role.")
        if any(u["email"] == email for u in w["users"].values()):
            return self._new_user_form(ep, values, "A member with this email already exists.")
        if active >= w["seats"]:
            return self._new_user_form(ep, values, f"All {w['seats']} seats are in use. Add seats under "
                                                   "Billing › Plan & seats, then try again.")
        uid = f"u{len(w['users']) + 1:02d}"
        w["users"][uid] = {"id": uid, "name": values["name"], "email": email, "role": role, "status": "Active",
                           "last": "Invited"}
        self._log(ep, "Invited member", values["name"])
        return redirect("/admin/users?done=created")

    def _user_page(self, ep, u: dict[str, Any], tab: str, ok: str = "", error: str = "") -> web.Response:
        base = f"/admin/users/{u['id']}"
        tabs = _tabs([("details", "Details", base), ("role", "Role", base + "?tab=role"),
                      ("access", "Access", base + "?tab=access")], tab)
        if tab == "role":
            if u["role"] == "Owner":
                inner = '<p>The owner role can only be transferred by contacting support.</p>'
            else:
                inner = (f'<form method="post" action="{base}/role"><p class="muted">Current role: {esc(u["role"])}</p>'
                         + _radios("role", "role", [(r.lower(), f"{r} · {ROLE_HELP[r]}") for r in ASSIGNABLE],
                                   u["role"].lower())
                         + '<div class="cn-buttons"><button class="primary" id="save-role">Save role</button></div></form>')
        elif tab == "access":
            if u["role"] == "Owner":
                toggle = '<p class="muted">The owner cannot be deactivated.</p>'
            elif u["status"] == "Active":
                toggle = f'<a class="button cn-danger" id="deactivate" href="{base}/deactivate">Deactivate member</a>'
            else:
                toggle = (f'<form method="post" action="{base}/reactivate"><button id="reactivate">Reactivate member'
                          "</button></form>")
            inner = f"""<p>Status: {_pill(u["status"])} · Last active: {esc(u["last"])}</p>
<div class="cn-buttons"><form method="post" action="{base}/reset"><button id="reset-password">Send password reset</button></form>
<form method="post" action="{base}/reset"><button id="sign-out">Sign out of all sessions</button></form></div>
<h3>Deactivation</h3><p class="muted">A deactivated member cannot sign in. Their API keys keep working until revoked.</p>{toggle}"""
        else:
            inner = f"""<form method="post" action="{base}/profile">
{text_input("user-name", "Full name", u["name"], name="name")}
{text_input("user-email", "Email", u["email"], name="email")}
<div class="cn-buttons"><button class="primary" id="save-details">Save details</button></div></form>"""
        content = f"""{_banner(ok, error)}<div class="card cn-user"><div class="cn-avatar">{esc(u["name"][0])}</div><div>
<div class="cn-name">{esc(u["name"])}</div><div class="muted">{esc(u["email"])} · {esc(u["role"])} · {_pill(u["status"])}</div></div>
<a class="button cn-back" id="back-to-members" href="/admin/users">← All members</a></div>{tabs}<div class="card">{inner}</div>"""
        return self._frame(ep, "users", "Manage member", content)

    async def user(self, request: web.Request, ep) -> web.Response:
        u = ep.world["users"].get(request.match_info["uid"])
        if u is None:
            return self._frame(ep, "users", "Member not found", '<div class="card">No such member.</div>')
        tab = field(request.query, "tab", "details")
        notice = {"role": "Role updated.", "details": "Details saved.", "reset": "Done: the member will get an email.",
                  "deactivated": "Member deactivated.", "reactivated": "Member reactivated."}.get(field(request.query, "done"), "")
        return self._user_page(ep, u, tab if tab in ("details", "role", "access") else "details", notice)

    async def save_user_profile(self, request: web.Request, ep) -> web.Response:
        u = ep.world["users"].get(request.match_info["uid"])
        if u is None:
            return redirect("/admin/users")
        form = await request.post()
        name, email = field(form, "name")[:80], field(form, "email").lower()[:120]
        if not name or "@" not in email:
            return self._user_page(ep, u, "details", error="Enter a name and a valid email address.")
        u["name"], u["email"] = name, email
        return redirect(f"/admin/users/{u['id']}?done=details")

    async def save_role(self, request: web.Request, ep) -> web.Response:
        u = ep.world["users"].get(request.match_info["uid"])
        if u is None:
            return redirect("/admin/users")
        role = field(await request.post(), "role").capitalize()
        if u["role"] == "Owner" or role not in ASSIGNABLE:
            return self._user_page(ep, u, "role", error="Choose one of the listed roles.")
        if role != u["role"]:
            self._log(ep, f"Changed role from {u['role']} to {role}", u["name"])
            u["role"] = role
        return redirect(f"/admin/users/{u['id']}?tab=role&done=role")

    async def reset_password(self, request: web.Request, ep) -> web.Response:
        return redirect(f"/admin/users/{request.match_info['uid']}?tab=access&done=reset")

    async def confirm_deactivate(self, request: web.Request, ep) -> web.Response:
        u = ep.world["users"].get(request.match_info["uid"])
        if u is None or u["role"] == "Owner":
            return redirect("/admin/users")
        content = f"""<div class="card cn-confirm"><h2>Deactivate {esc(u["name"])}?</h2>
<p>They will be signed out and lose access immediately. Their seat becomes free.
API keys they own are <b>not</b> revoked automatically.</p>
<form method="post" action="/admin/users/{u["id"]}/deactivate"><div class="cn-buttons">
<button class="danger" id="confirm-deactivate">Yes, deactivate</button>
<a class="button" id="cancel" href="/admin/users/{u["id"]}?tab=access">Cancel</a></div></form></div>"""
        return self._frame(ep, "users", "Deactivate member", content)

    async def deactivate(self, request: web.Request, ep) -> web.Response:
        u = ep.world["users"].get(request.match_info["uid"])
        if u is None or u["role"] == "Owner":
            return redirect("/admin/users")
        if u["status"] != "Deactivated":
            u["status"] = "Deactivated"
            self._log(ep, "Deactivated member", u["name"])
        return redirect(f"/admin/users/{u['id']}?tab=access&done=deactivated")

    async def reactivate(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        u = w["users"].get(request.match_info["uid"])
        if u is None:
            return redirect("/admin/users")
        if sum(x["status"] == "Active" for x in w["users"].values()) >= w["seats"]:
            return self._user_page(ep, u, "access", error="No free seat: add a seat under Billing first.")
        u["status"] = "Active"
        self._log(ep, "Reactivated member", u["name"])
        return redirect(f"/admin/users/{u['id']}?tab=access&done=reactivated")

    async def teams(self, request: web.Request, ep) -> web.Response:
        content = ('<div class="card cn-empty"><h2>Teams are a Business feature</h2><p>Group members into teams and '
                   'share projects with one click.</p><a class="button" id="compare-plans" href="/admin/billing/plan">'
                   'Compare plans</a></div>')
        return self._frame(ep, "teams", "Teams", content)

    async def audit(self, request: web.Request, ep) -> web.Response:
        q = field(request.query, "q")[:100]
        events = self._events(ep.world, q)
        pages = max(1, (len(events) + AUDIT_PER_PAGE - 1) // AUDIT_PER_PAGE)
        number = self._page_number(request, pages)
        rows = "".join(
            f'<tr><td class="muted">{esc(e["date"])}</td><td>{esc(e["actor"])}</td><td>{esc(e["action"])}</td>'
            f'<td>{esc(e["target"])}</td></tr>'
            for e in events[(number - 1) * AUDIT_PER_PAGE: number * AUDIT_PER_PAGE]
        ) or '<tr><td colspan="4" class="muted">No events match.</td></tr>'
        content = f"""<form class="cn-toolbar" action="/admin/audit" method="get">
<input type="text" id="audit-search" name="q" value="{esc(q)}" placeholder="Filter by person, action or target" autocomplete="off">
<button id="audit-search-button">Filter</button><span class="muted">{len(events)} events · read-only</span></form>
{table(["Time", "Actor", "Action", "Target"], rows, "cn-table cn-audit")}
{self._pager("/admin/audit", {"q": q} if q else {}, number, pages)}"""
        actions = '<form method="post" action="/admin/audit/export"><button id="export-audit">Export</button></form>'
        return self._frame(ep, "audit", "Audit log", content, actions)

    # ------------------------------------------------------------------ settings

    def _settings_page(self, ep, tab: str, ok: str = "") -> web.Response:
        w = ep.world
        tabs = _tabs([("profile", "Profile", "/admin/settings/profile"), ("security", "Security", "/admin/settings/security"),
                      ("sessions", "Sessions", "/admin/settings/sessions")], tab)
        if tab == "security":
            s = w["security"]
            inner = (f'<form method="post" action="/admin/settings/security"><h2>Sign-in</h2>'
                     + "".join(_check(id_, key, label, s[key]) for key, id_, label in SECURITY)
                     + "<h2>Session timeout</h2>" + _radios("timeout", "timeout", TIMEOUTS, s["timeout"])
                     + '<div class="cn-buttons"><button class="primary" id="save-security">Save security settings</button>'
                     "</div></form>")
        elif tab == "sessions":
            inner = (table(["Device", "Location", "Last seen"],
                           '<tr><td>Chrome on macOS (this device)</td><td>Lisbon, PT</td><td>now</td></tr>'
                           '<tr><td>Safari on iPhone</td><td>Lisbon, PT</td><td>Mar 18</td></tr>', "cn-table")
                     + '<form method="post" action="/admin/settings/sessions"><div class="cn-buttons">'
                     '<button id="sign-out-others">Sign out other sessions</button></div></form>')
        else:
            p = w["profile"]
            inner = f"""<form method="post" action="/admin/settings/profile">
{text_input("display-name", "Display name", p["name"], name="name")}
{text_input("job-title", "Job title", p["title"], name="title")}
<label>Language</label>{_radios("lang", "lang", LANGS, p["lang"])}
<div class="cn-buttons"><button class="primary" id="save-profile">Save profile</button></div></form>"""
        return self._frame(ep, tab if tab != "sessions" else "security", "Account settings",
                           f'{_banner(ok)}{tabs}<div class="card cn-form">{inner}</div>')

    async def settings(self, request: web.Request, ep) -> web.Response:
        tab = request.match_info["tab"]
        return self._settings_page(ep, tab if tab in ("profile", "security", "sessions") else "profile")

    async def save_settings(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        tab = request.match_info["tab"]
        form = await request.post()
        if tab == "security":
            timeout = field(form, "timeout")
            w["security"] = {key: field(form, key) == "on" for key, _, _ in SECURITY} | {
                "timeout": timeout if timeout in dict(TIMEOUTS) else w["security"]["timeout"]}
            self._log(ep, "Updated security settings", "Organization")
            return self._settings_page(ep, "security", "Security settings saved.")
        if tab == "profile":
            lang = field(form, "lang")
            w["profile"] = {"name": field(form, "name")[:80] or w["profile"]["name"], "title": field(form, "title")[:80],
                            "lang": lang if lang in dict(LANGS) else w["profile"]["lang"]}
            return self._settings_page(ep, "profile", "Profile saved.")
        return self._settings_page(ep, "sessions", "Other sessions were signed out.")

    def _notifications_page(self, ep, tab: str, ok: str = "") -> web.Response:
        s = ep.world[tab]
        tabs = _tabs([("email", "Email", "/admin/notifications/email"), ("slack", "Slack", "/admin/notifications/slack")], tab)
        where = "to jordan@" + DOMAIN if tab == "email" else "to #ops-alerts in the Lumen Labs workspace"
        inner = (f'<form method="post" action="/admin/notifications/{tab}"><p class="muted">Sent {esc(where)}.</p>'
                 + "".join(_check(f"{tab}-{key.replace('_', '-')}", key, label, s[key]) for key, label in EVENTS)
                 + "<h2>Delivery</h2>" + _radios(f"{tab}-digest", "digest", DIGESTS, s["digest"])
                 + f'<div class="cn-buttons"><button class="primary" id="save-{tab}">Save {tab} notifications</button>'
                 "</div></form>")
        return self._frame(ep, "notifications", "Notifications", f'{_banner(ok)}{tabs}<div class="card cn-form">{inner}</div>')

    async def notifications(self, request: web.Request, ep) -> web.Response:
        tab = request.match_info["tab"]
        return self._notifications_page(ep, tab if tab in ("email", "slack") else "email")

    async def save_notifications(self, request: web.Request, ep) -> web.Response:
        tab = request.match_info["tab"]
        if tab not in ("email", "slack"):
            return redirect("/admin/notifications/email")
        form = await request.post()
        digest = field(form, "digest")
        ep.world[tab] = {key: field(form, key) == "on" for key, _ in EVENTS} | {
            "digest": digest if digest in dict(DIGESTS) else ep.world[tab]["digest"]}
        return self._notifications_page(ep, tab, f"{tab.capitalize()} notification settings saved.")

    # ------------------------------------------------------------------ billing

    def _plan_page(self, ep, ok: str = "", error: str = "") -> web.Response:
        w = ep.world
        active = sum(u["status"] == "Active" for u in w["users"].values())
        name, price = PLANS[w["plan"]]
        options = [(k, f"{n} · ${p} per seat / month" if p else f"{n} · contact sales") for k, (n, p) in PLANS.items()]
        content = f"""{_banner(ok, error)}<div class="row"><form class="card cn-seats" method="post" action="/admin/billing/seats">
<h2>Seats</h2><p><b id="seats-used">{active} of {w["seats"]} seats in use</b></p>
{text_input("seats", "Number of seats", w["seats"], attrs=NO_AUTOCOMPLETE)}
<p class="muted">Billed at ${price} per seat, prorated.</p>
<div class="cn-buttons"><button class="primary" id="update-seats">Update seats</button></div></form>
<form class="card grow cn-form" method="post" action="/admin/billing/plan"><h2>Plan</h2>
<p class="muted">Current: {esc(name)}, billed {esc(w["cycle"])}.</p>{_radios("plan", "plan", options, w["plan"])}
<label>Billing cycle</label>{_radios("cycle", "cycle", [("monthly", "Monthly"), ("annual", "Annual (save 15%)")], w["cycle"])}
<div class="cn-buttons"><button id="change-plan">Change plan</button></div></form></div>"""
        return self._frame(ep, "plan", "Plan & seats", content)

    async def plan(self, request: web.Request, ep) -> web.Response:
        return self._plan_page(ep)

    async def change_plan(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        form = await request.post()
        plan, cycle = field(form, "plan"), field(form, "cycle")
        if plan == "enterprise":
            return self._plan_page(ep, error="Enterprise plans are set up by our sales team. Contact sales@console.example.")
        if plan not in PLANS or cycle not in ("monthly", "annual"):
            return self._plan_page(ep, error="Choose a plan and a billing cycle.")
        w["plan"], w["cycle"] = plan, cycle
        self._log(ep, f"Changed plan to {PLANS[plan][0]} ({cycle})", ORG)
        return self._plan_page(ep, "Plan updated.")

    async def update_seats(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        active = sum(u["status"] == "Active" for u in w["users"].values())
        try:
            seats = int(field(await request.post(), "seats"))
        except ValueError:
            return self._plan_page(ep, error="Enter the number of seats as a whole number.")
        if not active <= seats <= 500:
            return self._plan_page(ep, error=f"Seats must be between {active} (members in use) and 500.")
        if seats != w["seats"]:
            self._log(ep, f"Changed seats from {w['seats']} to {seats}", ORG)
            w["seats"] = seats
        return self._plan_page(ep, f"Subscription updated: {seats} seats.")

    async def invoices(self, request: web.Request, ep) -> web.Response:
        rows = "".join(f'<tr><td>{esc(i["no"])}</td><td>{esc(i["period"])}</td><td>{esc(i["date"])}</td>'
                       f'<td>${i["amount"]:,.2f}</td><td>{_pill(i["status"])}</td></tr>' for i in ep.world["invoices"])
        content = (table(["Invoice", "Period", "Issued", "Amount", "Status"], rows, "cn-table")
                   + '<p class="muted">Invoices are emailed to the billing contact on the 1st.</p>')
        return self._frame(ep, "invoices", "Invoices", content)

    def _payment_page(self, ep, error: str = "") -> web.Response:
        content = f"""{_banner(error=error)}<div class="card cn-form"><h2>Card on file</h2><p>Visa ending in 4242 · expires 08/27</p>
<form method="post" action="/admin/billing/payment">{text_input("billing-email", "Billing contact email", "finance@" + DOMAIN, name="email")}
<div class="cn-buttons"><button id="replace-card">Replace card</button></div></form></div>"""
        return self._frame(ep, "payment", "Payment method", content)

    async def payment(self, request: web.Request, ep) -> web.Response:
        return self._payment_page(ep)

    async def payment_update(self, request: web.Request, ep) -> web.Response:
        await request.post()
        return self._payment_page(ep, "Our payment provider is not reachable right now. Please try again later.")

    # ------------------------------------------------------------------ developers

    async def api_keys(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        rows = "".join(
            f'<tr><td><span class="cn-name">{esc(k["name"])}</span></td><td class="cn-mono">{esc(k["prefix"])}…</td>'
            f'<td>{esc(SCOPES[k["scope"]])}</td><td>{esc(w["users"][k["owner"]]["name"])}</td><td>{esc(k["created"])}</td>'
            f'<td>{esc(k["last_used"])}</td><td>{_pill(k["status"])}</td><td>'
            + (f'<a class="button cn-small cn-danger" id="revoke-{k["id"]}" href="/admin/api-keys/{k["id"]}/revoke">Revoke</a>'
               if k["status"] == "Active" else "") + "</td></tr>"
            for k in w["keys"].values())
        notice = field(request.query, "done")
        created = w["keys"].get(field(request.query, "key"))
        message = ""
        if notice == "revoked":
            message = _banner("API key revoked. Requests using it will now fail.")
        elif notice == "created" and created is not None:
            message = _banner(f"Key “{created['name']}” created: {created['prefix']}{created['id']}x9… Copy it now, "
                             "it will not be shown again.")
        content = message + table(["Name", "Key", "Scope", "Owner", "Created", "Last used", "Status", ""], rows, "cn-table")
        actions = '<a class="button primary" id="create-key" href="/admin/api-keys/new">+ Create API key</a>'
        return self._frame(ep, "api-keys", "API keys", content, actions)

    def _key_form(self, ep, values: dict[str, str], error: str = "") -> web.Response:
        content = f"""{_banner(error=error)}<form class="card cn-form" method="post" action="/admin/api-keys/new">
{text_input("key-name", "Key name", values.get("name", ""), name="name", placeholder="e.g. ci-deploy", attrs=NO_AUTOCOMPLETE)}
<label>Scope</label>{_radios("scope", "scope", list(SCOPES.items()), values.get("scope", "read"))}
<label>Expires after</label>{_radios("expiry", "expiry", list(EXPIRY.items()), values.get("expiry", "90"))}
<div class="cn-buttons"><button class="primary" id="create-key-submit">Create key</button>
<a class="button" id="cancel" href="/admin/api-keys">Cancel</a></div></form>"""
        return self._frame(ep, "api-keys", "Create API key", content)

    async def new_key(self, request: web.Request, ep) -> web.Response:
        return self._key_form(ep, {})

    async def create_key(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        form = await request.post()
        values = {"name": field(form, "name")[:60], "scope": field(form, "scope"), "expiry": field(form, "expiry")}
        if not values["name"] or values["scope"] not in SCOPES or values["expiry"] not in EXPIRY:
            return self._key_form(ep, values, "Give the key a name, a scope and an expiry.")
        if any(k["name"] == values["name"] and k["status"] == "Active" for k in w["keys"].values()):
            return self._key_form(ep, values, "An active key with this name already exists.")
        kid = f"k{len(w['keys']) + 1:02d}"
        w["keys"][kid] = {"id": kid, "name": values["name"], "prefix": f"lk_live_{len(w['keys']) * 4099 % 65536:04x}",
                          "scope": values["scope"], "owner": "u01", "created": "Mar 20", "last_used": "never",
                          "status": "Active", "expires": values["expiry"]}
        self._log(ep, "Created API key", values["name"])
        return redirect(f"/admin/api-keys?done=created&key={kid}")

    async def confirm_revoke(self, request: web.Request, ep) -> web.Response:
        k = ep.world["keys"].get(request.match_info["kid"])
        if k is None or k["status"] != "Active":
            return redirect("/admin/api-keys")
        content = f"""<div class="card cn-confirm"><h2>Revoke “{esc(k["name"])}”?</h2>
<p>Applications using <span class="cn-mono">{esc(k["prefix"])}…</span> will stop working immediately. This cannot be undone.</p>
<form method="post" action="/admin/api-keys/{k["id"]}/revoke"><div class="cn-buttons">
<button class="danger" id="confirm-revoke">Revoke key</button>
<a class="button" id="cancel" href="/admin/api-keys">Cancel</a></div></form></div>"""
        return self._frame(ep, "api-keys", "Revoke API key", content)

    async def revoke(self, request: web.Request, ep) -> web.Response:
        k = ep.world["keys"].get(request.match_info["kid"])
        if k is not None and k["status"] == "Active":
            k["status"], k["last_used"] = "Revoked", "—"
            self._log(ep, "Revoked API key", k["name"])
        return redirect("/admin/api-keys?done=revoked")

    async def webhooks(self, request: web.Request, ep, error: str = "") -> web.Response:
        content = f"""{_banner(error=error)}<div class="card cn-form"><h2>Endpoints</h2><p class="muted">No endpoints yet.</p>
<form method="post" action="/admin/webhooks">{text_input("webhook-url", "Endpoint URL", name="url", placeholder="https://example.com/hooks")}
<div class="cn-buttons"><button id="add-webhook">Add endpoint</button></div></form></div>"""
        return self._frame(ep, "webhooks", "Webhooks", content)

    async def add_webhook(self, request: web.Request, ep) -> web.Response:
        await request.post()
        return await self.webhooks(request, ep, "Webhooks need a verified domain. Verify a domain first (Business plan).")

    async def help(self, request: web.Request, ep) -> web.Response:
        content = ("<div class=\"card\"><h2>Admin guide</h2><ul><li>Members: add people, change roles, deactivate.</li>"
                   "<li>Billing: seats are billed monthly; add seats before adding members.</li>"
                   "<li>Audit log: every admin action, newest first.</li></ul></div>")
        return self._frame(ep, "help", "Help", content)


# ---------------------------------------------------------------------- templates


def _page_two(world: dict[str, Any]) -> list[dict[str, Any]]:
    """Members not on the first page of the list, so reaching them takes a search or a page click."""
    return AdminSite._members(world)[USERS_PER_PAGE:]


def _log_cutoff(world: dict[str, Any]) -> int:
    """The timestamp of the last event on the audit log's first page."""
    return AdminSite._events(world)[AUDIT_PER_PAGE - 1]["ts"]


class ToggleSetting(Template):
    name = "admin/toggle-setting"
    optimal_steps = 3

    def goal(self, world, rng):
        options = [("security", key, id_, label, "Security settings") for key, id_, label in SECURITY]
        options += [("email", key, f"email-{key.replace('_', '-')}", label, "email notifications") for key, label in EVENTS]
        options += [("security", "timeout", f"timeout-{k}", label, "Security settings") for k, label in TIMEOUTS
                    if k != world["security"]["timeout"]]
        options += [("email", "digest", f"email-digest-{k}", label, "email notifications") for k, label in DIGESTS
                    if k != world["email"]["digest"]]
        area, key, id_, label, where = rng.choice(options)
        if key == "timeout":
            value: Any = id_.split("-", 1)[1]
            text = f"Set the session timeout to {label} in the {where}."
        elif key == "digest":
            value = id_.rsplit("-", 1)[1]
            text = f"Change the delivery of email notifications to “{label}”."
        else:
            value = not world[area][key]
            text = f"{'Turn on' if value else 'Turn off'} “{label}” in the {where}."
        return Goal(text, "/", {"area": area, "key": key, "value": value, "id": id_,
                                "before": {a: dict(world[a]) for a in ("security", "email", "slack")}})

    def check(self, world, goal):
        g = goal.params
        expected = {a: dict(v) for a, v in g["before"].items()}
        expected[g["area"]][g["key"]] = g["value"]
        return all(world[a] == expected[a] for a in expected)

    def plan(self, goal, world):
        g = goal.params
        side, save = ("side-security", "save-security") if g["area"] == "security" else ("side-notifications", "save-email")
        return [PlanStep("click", {"id": side}), PlanStep("click", {"id": g["id"]}), PlanStep("click", {"id": save})]


class KeyRevoker(Template):
    name = "admin/key-revoker"
    optimal_steps = 5

    def goal(self, world, rng):
        key = rng.choice(sorted((k for k in world["keys"].values() if k["status"] == "Revoked"), key=lambda k: k["id"]))
        event = next(e for e in world["audit"] if e["action"] == "Revoked API key" and e["target"] == key["name"])
        who = rng.choice(_page_two(world))
        event["actor"] = who["name"]  # someone reached only by a member search or the second page
        assert event["ts"] < _log_cutoff(world)
        return Goal(f"Who revoked the API key “{key['name']}”? Answer with that person's email address.", "/",
                    {"key": key["name"], "who": who["name"]}, answer=who["email"])

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "side-audit"}),
                PlanStep("type", {"id": "audit-search"}, g["key"], enter=True),
                PlanStep("click", {"id": "side-users"}),
                PlanStep("type", {"id": "user-search"}, g["who"], enter=True),
                PlanStep("answer", text=goal.answer)]


class RevertRoleChange(Template):
    name = "admin/revert-role-change"
    optimal_steps = 8
    ood = True

    def goal(self, world, rng):
        u = rng.choice([u for u in _page_two(world) if u["status"] == "Active" and u["role"] != "Owner"])
        before = u["role"]
        after = rng.choice([r for r in ASSIGNABLE if r != before])
        earlier = rng.choice([r for r in ASSIGNABLE if r != before])
        cutoff = _log_cutoff(world)
        actor = next(x["name"] for x in world["users"].values() if x["role"] == "Admin" and x["id"] != u["id"])
        day = rng.randint(17, 30)
        for days, old, new in ((day, before, after), (day + rng.randint(5, 20), earlier, before)):
            ts = _ts(days, rng)
            world["audit"].append({"ts": ts, "date": _date(ts), "actor": actor,
                                   "action": f"Changed role from {old} to {new}", "target": u["name"]})
            assert ts < cutoff
        hits = AdminSite._events(world, u["name"])[:AUDIT_PER_PAGE]
        assert sum(e["target"] == u["name"] and e["action"].startswith("Changed role") for e in hits) == 2
        u["role"] = after
        when = _day(-day * 1440 + 600)
        return Goal(f"On {when} someone changed {u['name']}'s role by mistake. Find the change in the audit log and "
                    "set their role back to what it was just before it.", "/",
                    {"uid": u["id"], "name": u["name"], "role": before,
                     "roles": {x["id"]: x["role"] for x in world["users"].values()}})

    def check(self, world, goal):
        g = goal.params
        expected = dict(g["roles"], **{g["uid"]: g["role"]})
        return {x["id"]: x["role"] for x in world["users"].values() if x["id"] in expected} == expected

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "side-audit"}),
                PlanStep("type", {"id": "audit-search"}, g["name"], enter=True),
                PlanStep("click", {"id": "side-users"}),
                PlanStep("type", {"id": "user-search"}, g["name"], enter=True),
                PlanStep("click", {"id": f"edit-{g['uid']}"}),
                PlanStep("click", {"id": "tab-role"}),
                PlanStep("click", {"id": f"role-{g['role'].lower()}"}),
                PlanStep("click", {"id": "save-role"})]


class OffboardMember(Template):
    name = "admin/offboard-member"
    optimal_steps = 9

    def goal(self, world, rng):
        u = rng.choice([u for u in _page_two(world) if u["status"] == "Active" and u["role"] != "Owner"])
        active = sorted(k for k, v in world["keys"].items() if v["status"] == "Active")
        kid = rng.choice(active)
        for k in active:  # exactly one active key is theirs
            if world["keys"][k]["owner"] == u["id"] and k != kid:
                world["keys"][k]["owner"] = "u01"
        world["keys"][kid]["owner"] = u["id"]
        return Goal(f"{u['name']} has left {ORG}. Deactivate their account and revoke every API key they own.", "/",
                    {"uid": u["id"], "name": u["name"], "kid": kid,
                     "status": {x["id"]: x["status"] for x in world["users"].values()},
                     "keys": {k: v["status"] for k, v in world["keys"].items()}})

    def check(self, world, goal):
        g = goal.params
        users = dict(g["status"], **{g["uid"]: "Deactivated"})
        keys = dict(g["keys"], **{g["kid"]: "Revoked"})
        return (all(world["users"][k]["status"] == v for k, v in users.items())
                and all(world["keys"][k]["status"] == v for k, v in keys.items()))

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "side-users"}),
                PlanStep("type", {"id": "user-search"}, g["name"], enter=True),
                PlanStep("click", {"id": f"edit-{g['uid']}"}),
                PlanStep("click", {"id": "tab-access"}),
                PlanStep("click", {"id": "deactivate"}),
                PlanStep("click", {"id": "confirm-deactivate"}),
                PlanStep("click", {"id": "side-api-keys"}),
                PlanStep("click", {"id": f"revoke-{g['kid']}"}),
                PlanStep("click", {"id": "confirm-revoke"})]


class AddMemberWithSeat(Template):
    name = "admin/add-member-with-seat"
    optimal_steps = 9

    def goal(self, world, rng):
        taken = {u["name"] for u in world["users"].values()}
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        while name in taken:
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        first, last = name.split()
        email = f"{first.lower()}.{last.lower()}@{DOMAIN}"
        role = rng.choice(["Admin", "Editor", "Billing"])
        return Goal(f"Add {name} ({email}) to the organization with the {role} role. "
                    "Every seat is taken, so first buy exactly one more seat.", "/",
                    {"name": name, "email": email, "role": role, "seats": world["seats"] + 1})

    def check(self, world, goal):
        g = goal.params
        return world["seats"] == g["seats"] and any(
            u["email"] == g["email"] and normalise(u["name"]) == normalise(g["name"]) and u["role"] == g["role"]
            and u["status"] == "Active" for u in world["users"].values())

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "side-plan"}),
                PlanStep("type", {"id": "seats"}, str(g["seats"])),
                PlanStep("click", {"id": "update-seats"}),
                PlanStep("click", {"id": "side-users"}),
                PlanStep("click", {"id": "add-user"}),
                PlanStep("type", {"id": "new-name"}, g["name"]),
                PlanStep("type", {"id": "new-email"}, g["email"]),
                PlanStep("click", {"id": f"role-{g['role'].lower()}"}),
                PlanStep("click", {"id": "create-user"})]


SITE = AdminSite
