"""Shop: search, category filter, sorting, product pages, cart and checkout.

The reference site for the others: the world is plain data, handlers render it
and change it, templates read it.
"""

from __future__ import annotations

import random
from typing import Any

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, field, normalise, page, redirect
from asyncwebrl.envfleet.sites.html import banner, esc, hidden, links, table, text_input

CATEGORIES = ["Kitchen", "Garden", "Office", "Outdoor", "Audio", "Home"]
ADJECTIVES = ["Compact", "Deluxe", "Classic", "Eco", "Smart", "Rugged", "Mini", "Pro", "Silent", "Bright"]
NOUNS = {
    "Kitchen": ["Kettle", "Toaster", "Blender", "Knife Set", "Coffee Grinder"],
    "Garden": ["Hose", "Pruner", "Planter", "Rake", "Watering Can"],
    "Office": ["Desk Lamp", "Stapler", "Notebook", "Monitor Stand", "Chair Mat"],
    "Outdoor": ["Tent", "Lantern", "Backpack", "Camp Stove", "Sleeping Bag"],
    "Audio": ["Headphones", "Speaker", "Microphone", "Turntable", "Earbuds"],
    "Home": ["Blanket", "Mirror", "Clock", "Rug", "Vase"],
}
COLOURS = ["#fde68a", "#bfdbfe", "#c7d2fe", "#fbcfe8", "#bbf7d0", "#fed7aa"]
FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Keller"]
STREETS = ["Elm Street", "Harbour Road", "Mill Lane", "Station Avenue", "Park Row"]
CITIES = ["Lyon", "Porto", "Graz", "Turku", "Ghent"]


def _nav(ep) -> list[tuple[str, str]]:
    n = sum(ep.world["cart"].values())
    return [("shop", "Shop", "/shop/"), ("cart", f"Cart ({n})", "/shop/cart"), ("orders", "Orders", "/shop/orders")]


class ShopSite(Site):
    name = "shop"
    title = "NorthMarket"

    def __init__(self) -> None:
        self.templates = [FindProduct(), PriceLookup(), AddToCart(), CheapestInCategory(), RemoveFromCart(), Checkout()]

    def world(self, rng: random.Random) -> dict[str, Any]:
        products = {}
        names = set()
        for cat in CATEGORIES:
            for noun in rng.sample(NOUNS[cat], 4):
                name = f"{rng.choice(ADJECTIVES)} {noun}"
                while name in names:
                    name = f"{rng.choice(ADJECTIVES)} {noun}"
                names.add(name)
                pid = f"p{len(products) + 1:03d}"
                products[pid] = {
                    "id": pid, "name": name, "category": cat, "price": round(rng.uniform(4, 250), 2),
                    "rating": round(rng.uniform(2.5, 5), 1), "colour": rng.choice(COLOURS),
                }
        return {"products": products, "cart": {}, "orders": [], "viewed": [], "deal": rng.choice(list(products))}

    def routes(self):
        return [
            ("GET", "/", self.home),
            ("GET", "/product/{pid}", self.product),
            ("POST", "/cart/add", self.cart_add),
            ("POST", "/cart/remove", self.cart_remove),
            ("GET", "/cart", self.cart),
            ("GET", "/checkout", self.checkout_form),
            ("POST", "/checkout", self.checkout),
            ("GET", "/orders", self.orders),
            ("POST", "/wishlist", self.wishlist),
        ]

    async def home(self, request: web.Request, ep) -> web.Response:
        w = ep.world
        q = field(request.query, "q")
        cat = field(request.query, "cat")
        sort = field(request.query, "sort")
        items = list(w["products"].values())
        if q:
            items = [p for p in items if normalise(q) in normalise(p["name"])]
        if cat:
            items = [p for p in items if p["category"] == cat]
        if sort == "price":
            items.sort(key=lambda p: p["price"])
        elif sort == "rating":
            items.sort(key=lambda p: -p["rating"])
        cats = links([(c.lower(), c, f"/shop/?cat={c}") for c in CATEGORIES], cat.lower() if cat in CATEGORIES else "",
                     "cat-")
        keep = f"&q={esc(q)}" if q else ""
        keep += f"&cat={esc(cat)}" if cat else ""
        tiles = "".join(
            f'<div class="tile"><div class="thumb" style="background:{p["colour"]}"></div>'
            f'<a id="product-{p["id"]}" href="/shop/product/{p["id"]}">{esc(p["name"])}</a>'
            f'<div class="price">${p["price"]:.2f}</div><div class="muted">★ {p["rating"]} · {p["category"]}</div></div>'
            for p in items
        ) or '<p class="muted">No products match your search.</p>'
        deal = w["products"][w["deal"]]
        body = f"""
<div class="row"><div class="sidebar"><div class="card"><h2>Categories</h2><div class="list">
<a id="cat-all" href="/shop/">All products</a>{cats}</div></div>
<div class="ad" id="deal">Deal of the day: <a id="deal-link" href="/shop/product/{deal["id"]}">{esc(deal["name"])}</a></div></div>
<div class="grow"><form class="card" action="/shop/" method="get">
<input type="text" id="search" name="q" value="{esc(q)}" placeholder="Search products" style="width:60%">
{hidden({"cat": cat})}
<button class="primary" id="search-button">Search</button>
<span class="muted" style="margin-left:16px">Sort by:
<a id="sort-price" href="/shop/?sort=price{keep}">price</a> ·
<a id="sort-rating" href="/shop/?sort=rating{keep}">rating</a></span></form>
<div class="grid">{tiles}</div></div></div>"""
        return page(self, "Shop", body, _nav(ep), "shop")

    async def product(self, request: web.Request, ep) -> web.Response:
        p = ep.world["products"].get(request.match_info["pid"])
        if p is None:
            return page(self, "Not found", "<h1>Product not found</h1>", _nav(ep))
        ep.world["viewed"].append(p["id"])
        added = request.query.get("added") == "1"
        notice = banner('Added to your cart. <a href="/shop/cart">View cart</a>' if added else "", "ok", "added", markup=True)
        body = f"""{notice}<div class="card row"><div class="thumb" style="width:320px;height:220px;background:{p["colour"]};border-radius:10px"></div>
<div class="grow"><h1 id="product-name">{esc(p["name"])}</h1><div class="price" id="price">${p["price"]:.2f}</div>
<p class="muted">★ {p["rating"]} · {p["category"]} · Free returns within 30 days</p>
<p>A dependable {esc(p["name"].lower())} for everyday use. Ships in 2–4 business days.</p>
<form action="/shop/cart/add" method="post">{hidden({"pid": p["id"]})}
{text_input("qty", "Quantity", "1", type_="number", attrs=' min="1" max="20" style="width:90px"')}
<div style="margin-top:14px"><button class="primary" id="add-to-cart">Add to cart</button></div></form>
<form action="/shop/wishlist" method="post" style="margin-top:10px">{hidden({"pid": p["id"]})}
<button id="wishlist">♡ Add to wishlist</button></form></div></div>"""
        return page(self, p["name"], body, _nav(ep))

    async def cart_add(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        pid = field(form, "pid")
        try:
            qty = int(field(form, "qty", "1"))
        except ValueError:
            qty = 0
        if pid in ep.world["products"] and 1 <= qty <= 20:
            ep.world["cart"][pid] = min(20, ep.world["cart"].get(pid, 0) + qty)
            return redirect(f"/shop/product/{pid}?added=1")
        return redirect(f"/shop/product/{pid}")

    async def cart_remove(self, request: web.Request, ep) -> web.Response:
        ep.world["cart"].pop(field(await request.post(), "pid"), None)
        return redirect("/shop/cart")

    async def wishlist(self, request: web.Request, ep) -> web.Response:
        return redirect(f"/shop/product/{field(await request.post(), 'pid')}")

    def _cart_rows(self, ep) -> tuple[str, float]:
        rows, total = "", 0.0
        for pid, qty in ep.world["cart"].items():
            p = ep.world["products"][pid]
            total += qty * p["price"]
            rows += (
                f'<tr><td>{esc(p["name"])}</td><td>{qty}</td><td>${qty * p["price"]:.2f}</td><td>'
                f'<form action="/shop/cart/remove" method="post">{hidden({"pid": pid})}'
                f'<button class="danger" id="remove-{pid}">Remove</button></form></td></tr>'
            )
        return rows, total

    async def cart(self, request: web.Request, ep) -> web.Response:
        rows, total = self._cart_rows(ep)
        if not rows:
            body = '<h1>Your cart</h1><div class="card">Your cart is empty. <a href="/shop/">Keep shopping</a></div>'
        else:
            body = f"""<h1>Your cart</h1>{table(["Product", "Qty", "Total", ""], rows)}
<div class="card" style="margin-top:14px">Subtotal: <span class="price">${total:.2f}</span>
<a class="button primary" id="checkout" href="/shop/checkout" style="margin-left:20px">Proceed to checkout</a>
<a class="button" id="continue" href="/shop/">Continue shopping</a></div>"""
        return page(self, "Cart", body, _nav(ep))

    async def checkout_form(self, request: web.Request, ep, error: str = "") -> web.Response:
        rows, total = self._cart_rows(ep)
        body = f"""<h1>Checkout</h1>{banner(error)}<div class="row"><form class="card grow" action="/shop/checkout" method="post">
{text_input("name", "Full name", attrs=' style="width:70%"')}
{text_input("address", "Delivery address", attrs=' style="width:70%"')}
<label>Shipping</label>
<div><input type="radio" id="ship-standard" name="shipping" value="standard" checked> Standard (free, 5 days)</div>
<div><input type="radio" id="ship-express" name="shipping" value="express"> Express ($9.90, next day)</div>
<div style="margin-top:16px"><button class="primary" id="place-order">Place order</button></div></form>
<div class="card sidebar"><h2>Summary</h2><p>{len(ep.world["cart"])} item(s)</p><p class="price">${total:.2f}</p></div></div>"""
        return page(self, "Checkout", body, _nav(ep))

    async def checkout(self, request: web.Request, ep) -> web.Response:
        form = await request.post()
        name, address, shipping = field(form, "name"), field(form, "address"), field(form, "shipping", "standard")
        if not ep.world["cart"]:
            return await self.checkout_form(request, ep, "Your cart is empty.")
        if not name or not address:
            return await self.checkout_form(request, ep, "Please enter your name and delivery address.")
        ep.world["orders"].append({"items": dict(ep.world["cart"]), "name": name, "address": address,
                                   "shipping": shipping if shipping in ("standard", "express") else "standard"})
        ep.world["cart"] = {}
        return redirect("/shop/orders")

    async def orders(self, request: web.Request, ep) -> web.Response:
        rows = "".join(
            f'<tr><td>#{i + 1}</td><td>{esc(", ".join(ep.world["products"][p]["name"] + " ×" + str(q) for p, q in o["items"].items()))}</td>'
            f'<td>{esc(o["name"])}</td><td>{esc(o["shipping"])}</td></tr>'
            for i, o in enumerate(ep.world["orders"])
        )
        body = "<h1>Your orders</h1>" + (
            table(["Order", "Items", "Name", "Shipping"], rows)
            if rows else '<div class="card">No orders yet.</div>'
        )
        return page(self, "Orders", body, _nav(ep), "orders")


def _pick(world, rng):
    return world["products"][rng.choice(sorted(world["products"]))]


def _person(rng) -> tuple[str, str]:
    return (f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            f"{rng.randint(2, 99)} {rng.choice(STREETS)}, {rng.choice(CITIES)}")


class FindProduct(Template):
    name = "shop/find-product"
    optimal_steps = 2

    def goal(self, world, rng):
        p = _pick(world, rng)
        return Goal(f'Open the product page of "{p["name"]}".', "/", {"pid": p["id"], "name": p["name"]})

    def check(self, world, goal):
        return goal.params["pid"] in world["viewed"]

    def plan(self, goal, world):
        return [PlanStep("type", {"id": "search"}, goal.params["name"], enter=True),
                PlanStep("click", {"id": f"product-{goal.params['pid']}"})]


class PriceLookup(Template):
    name = "shop/price-lookup"
    optimal_steps = 2

    def goal(self, world, rng):
        p = _pick(world, rng)
        return Goal(f'How much does "{p["name"]}" cost? Answer with the price.', "/", {"name": p["name"]},
                    answer=f"${p['price']:.2f}")

    def plan(self, goal, world):
        return [PlanStep("type", {"id": "search"}, goal.params["name"], enter=True), PlanStep("answer", text=goal.answer)]


class CheapestInCategory(Template):
    name = "shop/cheapest-in-category"
    optimal_steps = 3

    def goal(self, world, rng):
        cat = rng.choice(CATEGORIES)
        cheapest = min((p for p in world["products"].values() if p["category"] == cat), key=lambda p: p["price"])
        return Goal(f"Which product is the cheapest in the {cat} category? Answer with its name.", "/",
                    {"cat": cat}, answer=cheapest["name"])

    def plan(self, goal, world):
        return [PlanStep("click", {"id": f"cat-{goal.params['cat'].lower()}"}), PlanStep("click", {"id": "sort-price"}),
                PlanStep("answer", text=goal.answer)]


class AddToCart(Template):
    name = "shop/add-to-cart"
    optimal_steps = 4

    def goal(self, world, rng):
        p = _pick(world, rng)
        n = rng.randint(2, 5)
        return Goal(f'Add {n} of "{p["name"]}" to your cart.', "/", {"pid": p["id"], "name": p["name"], "qty": n})

    def check(self, world, goal):
        return world["cart"] == {goal.params["pid"]: goal.params["qty"]}

    def plan(self, goal, world):
        return [PlanStep("type", {"id": "search"}, goal.params["name"], enter=True),
                PlanStep("click", {"id": f"product-{goal.params['pid']}"}),
                PlanStep("type", {"id": "qty"}, str(goal.params["qty"])),
                PlanStep("click", {"id": "add-to-cart"})]


class RemoveFromCart(Template):
    name = "shop/remove-from-cart"
    optimal_steps = 2

    def goal(self, world, rng):
        picks = rng.sample(sorted(world["products"]), 3)
        for pid in picks:
            world["cart"][pid] = rng.randint(1, 3)
        victim = world["products"][picks[1]]
        return Goal(f'Remove "{victim["name"]}" from your cart and keep the rest.', "/",
                    {"pid": victim["id"], "keep": sorted(set(picks) - {victim["id"]})})

    def check(self, world, goal):
        return sorted(world["cart"]) == goal.params["keep"]

    def plan(self, goal, world):
        return [PlanStep("click", {"id": "nav-cart"}), PlanStep("click", {"id": f"remove-{goal.params['pid']}"})]


class Checkout(Template):
    name = "shop/checkout"
    optimal_steps = 10

    def goal(self, world, rng):
        p = _pick(world, rng)
        n = rng.randint(2, 4)
        name, address = _person(rng)
        return Goal(f'Buy {n} of "{p["name"]}" with express shipping for {name}, delivered to {address}.', "/",
                    {"pid": p["id"], "name": p["name"], "qty": n, "person": name, "address": address})

    def check(self, world, goal):
        g = goal.params
        return any(o["items"] == {g["pid"]: g["qty"]} and o["shipping"] == "express"
                   and normalise(o["name"]) == normalise(g["person"]) and normalise(o["address"]) == normalise(g["address"])
                   for o in world["orders"])

    def plan(self, goal, world):
        g = goal.params
        return [PlanStep("type", {"id": "search"}, g["name"], enter=True),
                PlanStep("click", {"id": f"product-{g['pid']}"}),
                PlanStep("type", {"id": "qty"}, str(g["qty"])),
                PlanStep("click", {"id": "add-to-cart"}),
                PlanStep("click", {"id": "nav-cart"}),
                PlanStep("click", {"id": "checkout"}),
                PlanStep("type", {"id": "name"}, g["person"]),
                PlanStep("type", {"id": "address"}, g["address"]),
                PlanStep("click", {"id": "ship-express"}),
                PlanStep("click", {"id": "place-order"})]


SITE = ShopSite
