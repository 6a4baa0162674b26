"""Mail ("Postbox"): folders, a paginated message list, search, reading, reply, forward, compose, contacts.

The world is a seeded mailbox of ~50 messages across folders: order confirmations and
shipping notices, monthly invoices (older ones archived), meeting invites and their
updates, notes from colleagues, plus distractors (newsletters, look-alike senders, spam).
Every message carries the facts templates ask about in its body, never in the list.
"""

from __future__ import annotations

import datetime
import random
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import NO_AUTOCOMPLETE, banner, esc, hidden, option, text_input

ME_NAME, ME_ADDR = "Sam Rivera", "sam.rivera@postbox.io"
TODAY = datetime.date(2025, 3, 20)
PER_PAGE = 10
FOLDERS = [("inbox", "Inbox"), ("starred", "Starred"), ("sent", "Sent"), ("drafts", "Drafts"),
           ("archive", "Archive"), ("spam", "Spam"), ("trash", "Trash")]
FOLDER_LABELS = dict(FOLDERS) | {"all": "All mail"}
MOVABLE = ("inbox", "archive", "spam", "trash")
LABELS = ["Receipts", "Travel", "Team"]

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Tomas", "Yara"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Keller", "Brandt", "Costa",
        "Dubois", "Ferreira", "Ibsen", "Jansen", "Kowalski", "Larsen"]
DOMAINS = ["northwind.com", "fabrikam.org", "contoso.net", "acme.io", "tailspin.co"]
COMPANIES = {"northwind.com": "Northwind", "fabrikam.org": "Fabrikam", "contoso.net": "Contoso",
             "acme.io": "Acme", "tailspin.co": "Tailspin"}
SHOPS = ["Brightcart", "Parcelly", "Nordhaus", "Kettleworks", "Urbanloft", "Plumtree"]
PRODUCTS = ["Espresso Machine", "Standing Desk", "Trail Backpack", "Desk Lamp", "Wool Blanket", "Bluetooth Speaker",
            "Cast Iron Pan", "Running Shoes", "Monitor Arm", "Rain Jacket", "Water Filter", "Office Chair"]
VENDORS = ["Cloudnest", "Ledgerly", "Flowdesk", "Hostmark", "Paywise"]
PROJECTS = ["Atlas", "Beacon", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Horizon"]
TIMES = ["09:30", "10:00", "11:15", "13:00", "14:30", "15:45", "16:30"]
ROOMS = ["Harbour Room", "Room 4B", "Atrium", "Cedar Room", "Lab 2", "Boardroom", "Room 7A"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NOTES = ["Please keep this for the expense report.", "Can you check the delivery date?",
         "FYI, this is the one we talked about.", "Please file this with the team receipts.",
         "Could you confirm this arrived?"]
SUBJECTS = ["Team lunch order", "Expense report reminder", "Quarterly planning notes", "Desk move next week"]
PERSONAL = [
    ("Lunch on Friday?", "Are you free for lunch on Friday at 12:30? The new place on Mill Lane has good reviews."),
    ("Slides for the offsite", "I've put the draft slides for the offsite in the shared drive. Comments welcome by Thursday."),
    ("Budget question", "Quick one: do we still have room in the travel budget for the spring conference?"),
    ("Photos from the trip", "Finally sorted the photos from the trip. A few of them are really good!"),
    ("Parking permits", "Facilities says the new parking permits are ready for pick-up at reception."),
    ("Book recommendation", "You asked for a book tip last week: try 'The Overstory'. Loved it."),
]
ARCHIVE_FILLERS = [
    "Welcome to the team channel", "Holiday schedule", "Re: onboarding checklist", "Wi-Fi password change",
    "Conference recap", "Your feedback survey", "Coffee machine is fixed", "Notes from the retro",
    "Re: shared calendar", "Printer on floor 3", "Library books due", "Gym membership renewal",
    "Re: weekend plans", "Thank you!",
]
NEWSLETTERS = [
    ("The Weekly Byte", "news@weeklybyte.io", "This week: 10 tools for remote teams",
     "Our picks of the week, plus a deep dive into keyboard shortcuts. Unsubscribe at any time."),
    ("Morning Brief", "brief@morningbrief.news", "Markets open higher; what to watch today",
     "Your five-minute summary of the news. Read online. Manage preferences."),
    ("Cloudnest Community", "community@cloudnest-news.com", "New in March: faster dashboards",
     "Product news from the Cloudnest team. This is not a bill. Manage your newsletter settings."),
]
SPAM = [
    ("Prize Center", "winner@prize-center.biz", "Congratulations! You have been selected",
     "Claim your reward within 24 hours by confirming your bank details."),
    ("Account Security", "security@br1ghtcart-support.com", "Verify your Brightcart account now",
     "Unusual activity detected. Log in through this link to avoid suspension. Order number 000000."),
    ("Pharma Deals", "deals@cheap-pharma.shop", "Lowest prices, no prescription", "Limited offer. Reply STOP to opt out."),
]


def _display(days: int, minute: int) -> str:
    if days == 0:
        return f"{minute // 60:02d}:{minute % 60:02d}"
    d = TODAY - datetime.timedelta(days=days)
    return f"{d:%b} {d.day}"


def _addr(first: str, last: str, domain: str, rng: random.Random) -> str:
    pattern = rng.choice(["{f}.{l}", "{f}{l}", "{fi}.{l}", "{f}"])
    return pattern.format(f=first.lower(), l=last.lower(), fi=first[0].lower()) + "@" + domain


def _add(w: dict[str, Any], folder: str, name: str, addr: str, subject: str, body: list[str], days: int,
         rng: random.Random, unread: bool | None = None, to: str = ME_ADDR, **meta: Any) -> dict[str, Any]:
    minute = rng.randint(7 * 60, 19 * 60)
    mid = f"m{len(w['messages']) + 1:03d}"
    msg = {"id": mid, "folder": folder, "from_name": name, "from_addr": addr, "to": to, "subject": subject,
           "body": body, "ts": -days * 1440 + minute, "date": _display(days, minute),
           "unread": (rng.random() < 0.5 if days < 10 else False) if unread is None else unread,
           "starred": False, "reply_to": "", "forward_of": "", **meta}
    w["messages"][mid] = msg
    return msg


def _count(n: int) -> str:
    return f'<span class="mb-count">{n}</span>' if n else ""


class MailSite(Site):
    name = "mail"
    title = "Postbox"

    def __init__(self) -> None:
        self.templates = [ArchiveMessage(), InvoiceAmount(), ForwardShippingNotice(), ReplyWithMeeting(),
                          ShareOrderNumber()]

    # ------------------------------------------------------------------ world

    def world(self, rng: random.Random) -> dict[str, Any]:
        w: dict[str, Any] = {"messages": {}, "contacts": [], "settings": {"threads": True, "preview": False}}
        names: set[str] = set()
        firsts = rng.sample(FIRST, 11)
        firsts.append(firsts[0])  # two contacts share a first name
        for first in firsts:
            last = rng.choice(LAST)
            while f"{first} {last}" in names:
                last = rng.choice(LAST)
            names.add(f"{first} {last}")
            domain = rng.choice(DOMAINS)
            w["contacts"].append({"id": f"c{len(w['contacts']) + 1:02d}", "name": f"{first} {last}",
                                  "addr": _addr(first, last, domain, rng), "company": COMPANIES[domain]})
        rng.shuffle(w["contacts"])
        people = list(w["contacts"])

        # Shops: two orders each, a confirmation (same subject for both) and a shipping notice per order.
        w["orders"] = []
        numbers = rng.sample(range(100000, 999999), 8)
        products = rng.sample(PRODUCTS, 4)
        for s, shop in enumerate(rng.sample(SHOPS, 2)):
            domain = shop.lower() + ".com"
            for k in range(2):
                no, product = numbers[2 * s + k], products[2 * s + k]
                amount = round(rng.uniform(19, 480), 2)
                days = rng.randint(4, 14)
                conf = _add(w, "inbox", f"{shop} Orders", f"orders@{domain}", f"Your {shop} order is confirmed",
                            [f"Thanks for shopping with {shop}!", f"Order number: {no}",
                             f"Item: {product} · ${amount:,.2f}",
                             f"Customer ID: C-{numbers[4 + 2 * s + k] % 100000:05d} · Estimated delivery in 3-5 days."],
                            days, rng)
                track = f"1Z{rng.randint(10**9, 10**10 - 1)}"
                ship = _add(w, "inbox", f"{shop} Shipping", f"shipping@{domain}", f"Your order #{no} has shipped",
                            [f"Good news: your {product} is on its way.", f"Tracking number: {track}",
                             f"Order number: {no}. Delivery expected within 2 business days."],
                            rng.randint(1, days - 1), rng)
                w["orders"].append({"shop": shop, "no": str(no), "product": product, "conf": conf["id"],
                                    "ship": ship["id"]})
            _add(w, "inbox", f"{shop} Deals", f"deals@{shop.lower()}-mail.com", f"{shop} spring sale: up to 40% off",
                 ["Our biggest sale of the season starts now.", "Use code SPRING40 at checkout. Unsubscribe."],
                 rng.randint(0, 12), rng)

        # Invoices: the newest in the inbox, older months archived (older than every archive filler).
        w["invoices"] = []
        for vendor in rng.sample(VENDORS, 2):
            for back in range(4):  # invoice for February (sent Mar 2) back to November
                month = (1 - back) % 12  # index into MONTHS: Feb, Jan, Dec, Nov
                year = 2025 if month <= 1 else 2024
                sent = datetime.date(year + (month == 11), (month + 1) % 12 + 1, 2)
                amount = round(rng.uniform(40, 2400), 2)
                inv = f"INV-{rng.randint(10000, 99999)}"
                msg = _add(w, "inbox" if back == 0 else "archive", f"{vendor} Billing", f"billing@{vendor.lower()}.com",
                           f"{vendor} invoice for {MONTHS[month]} {year}",
                           [f"Your invoice {inv} for {MONTHS[month]} {year} is ready.",
                            f"Amount due: ${amount:,.2f}", "Payment is due within 14 days. Previous balance: $0.00."],
                           (TODAY - sent).days, rng, unread=back == 0)
                w["invoices"].append({"vendor": vendor, "month": f"{MONTHS[month]} {year}", "amount": amount,
                                      "id": msg["id"], "folder": msg["folder"]})

        # Meetings: an invite, a later update that moves it, and a colleague asking about it.
        w["meetings"] = []
        for p, project in enumerate(rng.sample(PROJECTS, 2)):
            organiser, manager = people[2 * p], people[2 * p + 1]
            t1, t2 = rng.sample(TIMES, 2)
            r1, r2 = rng.sample(ROOMS, 2)
            day = rng.choice(WEEKDAYS)
            invite = _add(w, "inbox", organiser["name"], organiser["addr"], f"Invitation: {project} review",
                          [f"Hi Sam, you're invited to the {project} review on {day} at {t1} in the {r1}.",
                           "Agenda to follow. Please bring the latest numbers."], rng.randint(9, 12), rng)
            update = _add(w, "inbox", organiser["name"], organiser["addr"], f"Updated: {project} review",
                          [f"Heads-up: the {project} review on {day} has moved to {t2} in the {r2}.",
                           "The original invitation is out of date, sorry for the shuffle."], rng.randint(4, 7), rng)
            question = _add(w, "inbox", manager["name"], manager["addr"], f"{project} review - when is it now?",
                            [f"Hi Sam, I lost track of the {project} review after the change.",
                             f"Could you reply with the new time and room? Thanks, {manager['name'].split()[0]}"],
                            rng.randint(0, 2), rng)
            w["meetings"].append({"project": project, "time": t2, "room": r2, "old_time": t1, "old_room": r1,
                                  "invite": invite["id"], "update": update["id"], "question": question["id"]})

        for (subject, text), person in zip(rng.sample(PERSONAL, 4), people[4:8]):
            _add(w, "inbox", person["name"], person["addr"], subject, [text, f"- {person['name'].split()[0]}"],
                 rng.randint(0, 15), rng)
        for name, addr, subject, text in NEWSLETTERS:
            _add(w, "inbox", name, addr, subject, [text], rng.randint(0, 14), rng)
        for name, addr, subject, text in SPAM:
            _add(w, "spam", name, addr, subject, [text], rng.randint(0, 10), rng)
        for subject in rng.sample(ARCHIVE_FILLERS, 12):
            person = rng.choice(people)
            _add(w, "archive", person["name"], person["addr"], subject,
                 ["Thanks, noted. See you soon.", f"- {person['name'].split()[0]}"], rng.randint(20, 40), rng)
        for subject, person in zip(rng.sample(SUBJECTS, 3), people[8:11]):
            _add(w, "sent", ME_NAME, ME_ADDR, subject, ["Hi, see below. Best, Sam"], rng.randint(1, 20), rng,
                 unread=False, to=person["addr"])
        _add(w, "trash", "Old Newsletter", "hello@oldnews.example", "We miss you!", ["Come back for 10% off."],
             30, rng, unread=False)
        return w

    # ------------------------------------------------------------------ helpers

    def routes(self):
        return [
            ("GET", "/", self.folder),
            ("GET", "/m/{mid}", self.message),
            ("POST", "/m/{mid}/move", self.move),
            ("POST", "/m/{mid}/star", self.star),
            ("POST", "/m/{mid}/unread", self.mark_unread),
            ("GET", "/compose", self.compose),
            ("POST", "/send", self.send),
            ("POST", "/draft", self.draft),
            ("GET", "/contacts", self.contacts),
            ("GET", "/label/{label}", self.label),
            ("GET", "/calendar", self.calendar),
            ("GET", "/settings", self.settings),
            ("POST", "/settings", self.save_settings),
        ]

    @staticmethod
    def _nav() -> list[tuple[str, str, str]]:
        return [("mail", "Mail", "/mail/"), ("contacts", "Contacts", "/mail/contacts"),
                ("calendar", "Calendar", "/mail/calendar"), ("settings", "Settings", "/mail/settings")]

    @staticmethod
    def _ctx(source: Any) -> tuple[str, str, int]:
        """The list an action came from: folder, query, page (all validated)."""
        folder = field(source, "folder", "inbox")
        if folder not in FOLDER_LABELS:
            folder = "inbox"
        try:
            number = max(1, min(99, int(field(source, "p", "1"))))
        except ValueError:
            number = 1
        return folder, field(source, "q")[:100], number

    @staticmethod
    def _list_url(folder: str, q: str, number: int, **extra: str) -> str:
        params = {"folder": folder} | ({"q": q} if q else {}) | ({"p": str(number)} if number > 1 else {}) | extra
        return "/mail/?" + urlencode(params)

    @staticmethod
    def _items(w: dict[str, Any], folder: str, q: str) -> list[dict[str, Any]]:
        msgs = list(w["messages"].values())
        if folder == "starred":
            msgs = [m for m in msgs if m["starred"] and m["folder"] not in ("spam", "trash")]
        elif folder == "all":
            msgs = [m for m in msgs if m["folder"] not in ("spam", "trash")]
        else:
            msgs = [m for m in msgs if m["folder"] == folder]
        if q:
            needle = normalise(q)
            msgs = [m for m in msgs if needle in normalise(" ".join([m["from_name"], m["from_addr"], m["to"],
                                                                      m["subject"], *m["body"]]))]
        return sorted(msgs, key=lambda m: -m["ts"])

    def _layout(self, ep, content: str, title: str, folder: str = "", q: str = "", nav: str = "mail") -> web.Response:
        w = ep.world
        unread = {key: sum(1 for m in w["messages"].values() if m["folder"] == key and m["unread"])
                  for key in ("inbox", "spam", "drafts")}
        folders = "".join(
            f'<a id="folder-{key}" class="{"active" if key == folder else ""}" href="/mail/?folder={key}">'
            f'{label}{_count(unread.get(key, 0))}</a>'
            for key, label in FOLDERS
        )
        labels = "".join(f'<a id="label-{lab.lower()}" href="/mail/label/{lab.lower()}"><span class="mb-dot"></span>{lab}</a>'
                         for lab in LABELS)
        search_folder = folder if folder in FOLDER_LABELS else "inbox"
        body = f"""<div class="row mb-shell"><aside class="sidebar mb-side">
<a class="button primary mb-compose" id="compose" href="/mail/compose">✎ Compose</a>
<div class="list mb-folders">{folders}</div><div class="mb-labels-head">Labels</div><div class="list mb-labels">{labels}</div></aside>
<section class="grow"><form class="mb-search" action="/mail/" method="get">{hidden({"folder": search_folder})}
<input type="text" id="search" name="q" value="{esc(q)}" placeholder="Search in {esc(FOLDER_LABELS[search_folder])}" autocomplete="off">
<button id="search-button">Search</button></form>{content}</section></div>"""
        return page(self, title, body, self._nav(), nav)

    # ------------------------------------------------------------------ pages

    async def folder(self, request: web.Request, ep) -> web.Response:
        folder, q, number = self._ctx(request.query)
        items = self._items(ep.world, folder, q)
        pages = max(1, (len(items) + PER_PAGE - 1) // PER_PAGE)
        number = min(number, pages)
        shown = items[(number - 1) * PER_PAGE: number * PER_PAGE]
        done = field(request.query, "done")
        notices = {"sent": "Your message has been sent.", "draft": "Draft saved.", "archive": "Conversation archived.",
                   "trash": "Conversation moved to Trash.", "spam": "Conversation reported as spam.",
                   "inbox": "Conversation moved to Inbox.", "unread": "Marked as unread."}
        notice = banner(notices.get(done, ""), "ok", "notice")
        ctx = urlencode({"folder": folder} | ({"q": q} if q else {}) | ({"p": str(number)} if number > 1 else {}))
        rows = "".join(
            f'<tr class="{"unread" if m["unread"] else ""}"><td class="mb-star">{"★" if m["starred"] else "☆"}</td>'
            f'<td class="mb-from">{esc(("To: " + m["to"]) if m["folder"] in ("sent", "drafts") else m["from_name"])}</td>'
            f'<td class="mb-subj"><a id="msg-{m["id"]}" href="/mail/m/{m["id"]}?{esc(ctx)}">{esc(m["subject"] or "(no subject)")}</a></td>'
            f'<td class="mb-date">{esc(m["date"])}</td></tr>'
            for m in shown
        )
        label = FOLDER_LABELS[folder]
        if not rows:
            rows = f'<tr><td colspan="4" class="muted mb-empty">{"No messages match your search." if q else "Nothing in " + label + "."}</td></tr>'
        first = (number - 1) * PER_PAGE + 1 if items else 0
        prev_link = (f'<a class="button mb-pg" id="page-prev" href="{esc(self._list_url(folder, q, number - 1))}">‹ Newer</a>'
                     if number > 1 else "")
        next_link = (f'<a class="button mb-pg" id="page-next" href="{esc(self._list_url(folder, q, number + 1))}">Older ›</a>'
                     if number < pages else "")
        info = ""
        if q:
            info = (f'<p class="mb-results" id="results-info">{len(items)} result(s) for “{esc(q)}” in {esc(label)}'
                    + ("" if folder == "all" else
                       f' · <a id="search-all" href="{esc(self._list_url("all", q, 1))}">Search all folders</a>')
                    + f' · <a id="clear-search" href="/mail/?folder={esc(folder)}">Clear</a></p>')
        content = f"""{notice}<div class="mb-listhead"><h1>{esc(label)}</h1>
<span class="muted">{first}–{first + len(shown) - 1 if shown else 0} of {len(items)}</span>{prev_link}{next_link}</div>{info}
<table class="mb-list">{rows}</table>"""
        return self._layout(ep, content, label, folder, q)

    async def message(self, request: web.Request, ep) -> web.Response:
        m = ep.world["messages"].get(request.match_info["mid"])
        folder, q, number = self._ctx(request.query)
        if m is None:
            return self._layout(ep, '<div class="card"><h1>Message not found</h1><p>It may have been deleted.</p></div>',
                                "Not found", folder, q)
        m["unread"] = False
        context = hidden({"folder": folder, "q": q, "p": number}, keep_empty=True)
        moves = "".join(f'<button name="dest" value="{d}" id="move-{d}">{FOLDER_LABELS[d]}</button>'
                        for d in MOVABLE if d != m["folder"])
        paras = "".join(f"<p>{esc(t)}</p>" for t in m["body"])
        starred = request.query.get("starred")
        notice = banner({"1": "Conversation starred.", "0": "Star removed."}.get(starred or "", ""), "ok", "notice")
        content = f"""{notice}<div class="mb-toolbar"><a class="button" id="back" href="{esc(self._list_url(folder, q, number))}">← Back</a>
<form method="post" action="/mail/m/{m["id"]}/move">{context}
<button name="dest" value="archive" id="archive">Archive</button><button name="dest" value="spam" id="report-spam">Report spam</button>
<button class="danger" name="dest" value="trash" id="delete">Delete</button></form>
<form method="post" action="/mail/m/{m["id"]}/star">{context}<button id="star">{"★ Starred" if m["starred"] else "☆ Star"}</button></form>
<form method="post" action="/mail/m/{m["id"]}/unread">{context}<button id="mark-unread">Mark unread</button></form>
<form method="post" action="/mail/m/{m["id"]}/move" class="mb-moveto">{context}<span class="muted">Move to</span>{moves}</form></div>
<article class="card mb-read"><h1 id="subject">{esc(m["subject"] or "(no subject)")}</h1>
<div class="mb-meta"><span class="mb-sender" id="sender">{esc(m["from_name"])}</span> <span class="muted">&lt;{esc(m["from_addr"])}&gt;</span>
<span class="muted mb-when">{esc(m["date"])}</span><div class="muted">to {esc(m["to"])}</div></div>
<div class="mb-body">{paras}</div>
<div class="mb-actions"><a class="button" id="reply" href="/mail/compose?reply={m["id"]}">↩ Reply</a>
<a class="button" id="reply-all" href="/mail/compose?reply={m["id"]}&amp;all=1">Reply all</a>
<a class="button" id="forward" href="/mail/compose?forward={m["id"]}">Forward ↪</a></div></article>"""
        return self._layout(ep, content, m["subject"] or "Message", folder, q)

    async def move(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        folder, q, number = self._ctx(form)
        dest = field(form, "dest")
        m = ep.world["messages"].get(request.match_info["mid"])
        if m is None or dest not in MOVABLE:
            return redirect(self._list_url(folder, q, number))
        m["folder"] = dest
        return redirect(self._list_url(folder, q, number, done=dest))

    async def star(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        folder, q, number = self._ctx(form)
        m = ep.world["messages"].get(request.match_info["mid"])
        if m is None:
            return redirect(self._list_url(folder, q, number))
        m["starred"] = not m["starred"]
        params = {"folder": folder} | ({"q": q} if q else {}) | {"p": str(number), "starred": "1" if m["starred"] else "0"}
        return redirect(f"/mail/m/{m['id']}?{urlencode(params)}")

    async def mark_unread(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        folder, q, number = self._ctx(form)
        m = ep.world["messages"].get(request.match_info["mid"])
        if m is not None:
            m["unread"] = True
        return redirect(self._list_url(folder, q, number, done="unread"))

    def _compose_form(self, ep, values: dict[str, str], error: str = "") -> web.Response:
        w = ep.world
        original = w["messages"].get(values.get("reply_to") or values.get("forward_of") or "")
        quoted = ""
        if original is not None:
            head = "Forwarded message" if values.get("forward_of") else f"On {original['date']}, {original['from_name']} wrote"
            quoted = (f'<div class="mb-quote"><div class="muted">— {esc(head)} —</div><b>{esc(original["subject"])}</b>'
                      + "".join(f"<p>{esc(t)}</p>" for t in original["body"]) + "</div>")
        title = "Reply" if values.get("reply_to") else "Forward" if values.get("forward_of") else "New message"
        content = f"""{banner(error)}<form class="card mb-compose-form" method="post" action="/mail/send"><h1>{title}</h1>
{hidden({"reply_to": values.get("reply_to", ""), "forward_of": values.get("forward_of", "")}, keep_empty=True)}
<div class="mb-frow">{text_input("to", "To", values.get("to", ""), placeholder="name@example.com", attrs=NO_AUTOCOMPLETE)}</div>
<div class="mb-frow">{text_input("cc", "Cc", values.get("cc", ""), attrs=NO_AUTOCOMPLETE)}</div>
<div class="mb-frow">{text_input("subject", "Subject", values.get("subject", ""), attrs=NO_AUTOCOMPLETE)}</div>
<textarea id="body" name="body" rows="6" placeholder="Write your message">{esc(values.get("body", ""))}</textarea>
<div class="mb-sendrow"><button class="primary" id="send">Send</button>
<button id="save-draft" formaction="/mail/draft">Save draft</button>
<a class="button" id="discard" href="/mail/">Discard</a><span class="muted">Separate several addresses with commas.</span></div>
{quoted}</form>"""
        return self._layout(ep, content, title)

    async def compose(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        values: dict[str, str] = {}
        reply, forward = field(request.query, "reply"), field(request.query, "forward")
        if reply in w["messages"]:
            m = w["messages"][reply]
            values = {"reply_to": reply, "to": m["to"] if m["folder"] == "sent" else m["from_addr"],
                      "subject": m["subject"] if m["subject"].startswith("Re: ") else "Re: " + m["subject"]}
            if request.query.get("all") == "1" and m["to"] != ME_ADDR:
                values["cc"] = m["to"]
        elif forward in w["messages"]:
            values = {"forward_of": forward, "subject": "Fwd: " + w["messages"][forward]["subject"]}
        else:
            cid = field(request.query, "to")
            contact = next((c for c in w["contacts"] if c["id"] == cid), None)
            if contact is not None:
                values = {"to": contact["addr"]}
        return self._compose_form(ep, values)

    @staticmethod
    def _addresses(text: str) -> list[str] | None:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+\.[a-z]{2,}", p, re.I) for p in parts):
            return None
        return parts

    async def _values(self, request: web.Request, ep) -> dict[str, str]:
        form = await request.post()
        values = {k: field(form, k) for k in ("to", "cc", "subject", "body", "reply_to", "forward_of")}
        for k in ("reply_to", "forward_of"):
            if values[k] not in ep.world["messages"]:
                values[k] = ""
        return values

    def _store(self, ep, values: dict[str, str], folder: str) -> None:
        w = ep.world
        ts = max(m["ts"] for m in w["messages"].values()) + 1
        mid = f"m{len(w['messages']) + 1:03d}"
        w["messages"][mid] = {"id": mid, "folder": folder, "from_name": ME_NAME, "from_addr": ME_ADDR,
                              "to": values["to"] + (", " + values["cc"] if values["cc"] else ""),
                              "to_list": self._addresses(values["to"]) or [], "cc": values["cc"],
                              "subject": values["subject"], "body": [values["body"]] if values["body"] else [],
                              "ts": ts, "date": _display(0, max(0, min(1439, 16 * 60 + len(w["messages"])))),
                              "unread": False, "starred": False, "reply_to": values["reply_to"],
                              "forward_of": values["forward_of"]}

    async def send(self, request: web.Request, ep) -> web.Response:
        values = await self._values(request, ep)
        if self._addresses(values["to"]) is None:
            return self._compose_form(ep, values, "Please enter at least one valid email address in To.")
        if values["cc"] and self._addresses(values["cc"]) is None:
            return self._compose_form(ep, values, "The Cc field has an address that is not valid.")
        self._store(ep, values, "sent")
        return redirect("/mail/?folder=inbox&done=sent")

    async def draft(self, request: web.Request, ep) -> web.Response:
        values = await self._values(request, ep)
        self._store(ep, values, "drafts")
        return redirect("/mail/?folder=inbox&done=draft")

    async def contacts(self, request: web.Request, ep) -> web.Response:
        cards = "".join(
            f'<div class="mb-contact"><div class="mb-avatar">{esc(c["name"][0])}</div><div class="grow">'
            f'<div class="mb-cname">{esc(c["name"])}</div><div class="muted">{esc(c["addr"])}</div>'
            f'<div class="muted">{esc(c["company"])}</div></div>'
            f'<a class="button mb-write" id="write-{c["id"]}" href="/mail/compose?to={c["id"]}">Write</a></div>'
            for c in sorted(ep.world["contacts"], key=lambda c: c["name"])
        )
        content = f'<div class="mb-listhead"><h1>Contacts</h1><span class="muted">{len(ep.world["contacts"])} people</span></div><div class="mb-contacts">{cards}</div>'
        return self._layout(ep, content, "Contacts", nav="contacts")

    async def label(self, request: web.Request, ep) -> web.Response:
        name = request.match_info["label"]
        label = next((lab for lab in LABELS if lab.lower() == name), "Label")
        content = (f'<div class="mb-listhead"><h1>{esc(label)}</h1></div><div class="card muted" id="label-empty">'
                   "No conversations have this label yet. Labels are applied by filters in Settings.</div>")
        return self._layout(ep, content, label)

    async def calendar(self, request: web.Request, ep) -> web.Response:
        content = ('<div class="mb-listhead"><h1>Calendar</h1></div><div class="card"><p id="calendar-status">'
                   "Calendar sync is paused for this account.</p><p class=\"muted\">Invitations you receive by email "
                   'stay in your inbox.</p><button id="reconnect" disabled>Reconnect calendar</button></div>')
        return self._layout(ep, content, "Calendar", nav="calendar")

    def _settings_page(self, ep, saved: bool = False) -> web.Response:
        s = ep.world["settings"]
        content = f"""{banner("Settings saved." if saved else "", "ok", "notice")}<form class="card" method="post" action="/mail/settings"><h1>Settings</h1>
{option("checkbox", "threads", "threads", "Group messages into conversations", checked=s["threads"], cls="mb-check")}
{option("checkbox", "preview", "preview", "Show message previews in the list", checked=s["preview"], cls="mb-check")}
<div class="mb-sendrow"><button class="primary" id="save-settings">Save changes</button></div></form>"""
        return self._layout(ep, content, "Settings", nav="settings")

    async def settings(self, request: web.Request, ep) -> web.Response:
        return self._settings_page(ep)

    async def save_settings(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        ep.world["settings"] = {"threads": field(form, "threads") == "on", "preview": field(form, "preview") == "on"}
        return self._settings_page(ep, saved=True)


# ---------------------------------------------------------------------- templates


def _contains(haystack: str, needle: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(normalise(needle))}(?![a-z0-9])", normalise(haystack)) is not None


def _sent(world: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in world["messages"].values() if m["folder"] == "sent" and m["from_addr"] == ME_ADDR
            and "to_list" in m]


def _one_to(m: dict[str, Any], addr: str) -> bool:
    return [normalise(a) for a in m["to_list"]] == [normalise(addr)]


class ArchiveMessage(Template):
    name = "mail/archive-message"
    optimal_steps = 2

    def goal(self, world, rng):
        inbox = MailSite._items(world, "inbox", "")[:PER_PAGE]
        subjects = [m["subject"] for m in world["messages"].values()]
        m = rng.choice([m for m in inbox if subjects.count(m["subject"]) == 1])
        return Goal(f'Archive the email "{m["subject"]}" from {m["from_name"]}.', "/",
                    {"mid": m["id"], "folders": {k: v["folder"] for k, v in world["messages"].items()}})

    def check(self, world, goal):
        before = goal.params["folders"]
        return world["messages"][goal.params["mid"]]["folder"] == "archive" and all(
            world["messages"][k]["folder"] == f for k, f in before.items() if k != goal.params["mid"])

    def plan(self, goal, world):
        return [PlanStep("click", {"id": f"msg-{goal.params['mid']}"}), PlanStep("click", {"id": "archive"})]


class InvoiceAmount(Template):
    name = "mail/invoice-amount"
    optimal_steps = 4

    def goal(self, world, rng):
        inv = rng.choice([i for i in world["invoices"] if i["folder"] == "archive"])
        first_page = {m["id"] for m in MailSite._items(world, "archive", "")[:PER_PAGE]}
        assert inv["id"] not in first_page
        return Goal(f"How much was due on the {inv['vendor']} invoice for {inv['month']}? Answer with the amount.",
                    "/", {"vendor": inv["vendor"], "mid": inv["id"]}, answer=f"${inv['amount']:,.2f}")

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "folder-archive"}),
                PlanStep("type", {"id": "search"}, goal.params["vendor"], enter=True),
                PlanStep("click", {"id": f"msg-{goal.params['mid']}"}),
                PlanStep("answer", text=goal.answer)]


class ForwardShippingNotice(Template):
    name = "mail/forward-shipping-notice"
    optimal_steps = 7
    ood = True

    def goal(self, world, rng):
        order = rng.choice(world["orders"])
        contact = rng.choice(world["contacts"])
        note = rng.choice(NOTES)
        return Goal(f'Forward the shipping notice for order #{order["no"]} to {contact["name"]} (their address is in '
                    f'Contacts) with the note: "{note}"', "/",
                    {"mid": order["ship"], "no": order["no"], "addr": contact["addr"], "note": note})

    def check(self, world, goal):
        g = goal.params
        return any(m["forward_of"] == g["mid"] and _one_to(m, g["addr"]) and _contains(" ".join(m["body"]), g["note"])
                   for m in _sent(world))

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("click", {"id": "nav-contacts"}),
                PlanStep("type", {"id": "search"}, g["no"], enter=True),
                PlanStep("click", {"id": f"msg-{g['mid']}"}),
                PlanStep("click", {"id": "forward"}),
                PlanStep("type", {"id": "to"}, g["addr"]),
                PlanStep("type", {"id": "body"}, g["note"]),
                PlanStep("click", {"id": "send"})]


class ReplyWithMeeting(Template):
    name = "mail/reply-with-meeting"
    optimal_steps = 9

    def goal(self, world, rng):
        mt = rng.choice(world["meetings"])
        q = world["messages"][mt["question"]]
        return Goal(f'{q["from_name"]} asked when the {mt["project"]} review is now. Reply to their email with the '
                    f"current time and room, and delete the outdated invitation for it.", "/",
                    dict(mt, asker=q["from_addr"]))

    def check(self, world, goal):
        g = goal.params
        msgs = world["messages"]
        return msgs[g["invite"]]["folder"] == "trash" and msgs[g["update"]]["folder"] != "trash" and any(
            m["reply_to"] == g["question"] and _one_to(m, g["asker"]) and _contains(" ".join(m["body"]), g["time"])
            and _contains(" ".join(m["body"]), g["room"]) for m in _sent(world))

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("type", {"id": "search"}, f"{g['project']} review", enter=True),
                PlanStep("click", {"id": f"msg-{g['update']}"}),
                PlanStep("click", {"id": "back"}),
                PlanStep("click", {"id": f"msg-{g['invite']}"}),
                PlanStep("click", {"id": "delete"}),
                PlanStep("click", {"id": f"msg-{g['question']}"}),
                PlanStep("click", {"id": "reply"}),
                PlanStep("type", {"id": "body"}, f"It is now at {g['time']} in the {g['room']}."),
                PlanStep("click", {"id": "send"})]


class ShareOrderNumber(Template):
    name = "mail/share-order-number"
    optimal_steps = 9

    def goal(self, world, rng):
        order = rng.choice(world["orders"])
        contact = rng.choice(world["contacts"])
        subject = rng.choice(["Order number", "The order we discussed", f"{order['product']} order",
                              "Order details"])
        return Goal(f'Email {contact["name"]} (see Contacts) the order number of your {order["product"]} order from '
                    f'{order["shop"]}, with the subject "{subject}". Then star that order confirmation and move it to '
                    f"the Archive.", "/",
                    {"mid": order["conf"], "shop": order["shop"], "no": order["no"], "cid": contact["id"],
                     "addr": contact["addr"], "subject": subject})

    def check(self, world, goal):
        g = goal.params
        conf = world["messages"][g["mid"]]
        return conf["starred"] and conf["folder"] == "archive" and any(
            _one_to(m, g["addr"]) and normalise(m["subject"]) == normalise(g["subject"])
            and _contains(" ".join(m["body"]), g["no"]) for m in _sent(world))

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("type", {"id": "search"}, g["shop"], enter=True),
                PlanStep("click", {"id": f"msg-{g['mid']}"}),
                PlanStep("click", {"id": "star"}),
                PlanStep("click", {"id": "archive"}),
                PlanStep("click", {"id": "nav-contacts"}),
                PlanStep("click", {"id": f"write-{g['cid']}"}),
                PlanStep("type", {"id": "subject"}, g["subject"]),
                PlanStep("type", {"id": "body"}, f"Hi, the order number is {g['no']}."),
                PlanStep("click", {"id": "send"})]


SITE = MailSite
