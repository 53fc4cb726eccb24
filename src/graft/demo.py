"""``graft demo``: a support-ticket intent dataset the project writes itself, and a tour of graft on it.

Tickets are composed from hand-written phrasings per intent, with openers and closers shared across
intents (the words around a request carry no label), sampled with a fixed seed. The test file uses
phrasings that no training ticket uses: otherwise the same request with a different greeting would
sit on both sides and flatter the score.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

INTENTS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my subscription this month",
        "my invoice shows an amount I don't recognise",
        "why did my card get billed before the renewal date",
        "the payment went through but my plan still says unpaid",
        "can you explain the extra fee on my last statement",
        "I need a copy of the invoice for March for my accountant",
        "the price on my bill is higher than the one advertised",
        "my bank shows a pending charge from you that I never approved",
        "please update the billing address on my invoices",
        "I got billed for the premium tier but I'm on basic",
        "how do I change the credit card you charge every month",
        "there's a duplicate payment on my account",
        "the discount code was not applied to my bill",
        "I paid by bank transfer and it is not showing as received",
        "your receipt lists tax that should not apply to me",
    ],
    "login": [
        "I can't log in to my account",
        "the password reset email never arrives",
        "it keeps saying my password is wrong even after resetting it",
        "my account got locked after too many sign-in attempts",
        "the two-factor code is not accepted",
        "I lost my phone and can't get the verification code",
        "how do I reset my password",
        "the login page just spins and never signs me in",
        "I forgot which email address I used to register",
        "single sign-on with my company account stopped working",
        "someone changed my password and I can't get back in",
        "the app logs me out every few minutes",
        "my username is not recognised on the sign-in screen",
        "the magic link to sign in has expired already",
        "I changed my email and now I cannot access the account",
    ],
    "shipping": [
        "where is my package",
        "my order was supposed to arrive on Monday and it's still not here",
        "the tracking number doesn't show any updates",
        "the courier says delivered but I never received it",
        "can I change the delivery address for an order that already shipped",
        "how long does shipping to Canada usually take",
        "my parcel is stuck in customs",
        "the box arrived damaged and half the items are missing",
        "do you offer express delivery",
        "the order status has said processing for a week",
        "I was sent someone else's order",
        "can the driver leave the package with my neighbour",
        "the delivery window keeps getting pushed back",
        "only one of my two boxes was delivered",
        "the shipping label was printed with the wrong postcode",
    ],
    "refund": [
        "I want my money back for this order",
        "how do I return an item that doesn't fit",
        "I sent the product back two weeks ago and still have no refund",
        "can I get a refund instead of store credit",
        "the refund went to an old card that is closed",
        "the item is defective and I'd like to return it",
        "what is your return policy for opened products",
        "I was promised a partial refund for the late delivery",
        "please print me a return label",
        "you refunded the wrong amount",
        "I cancelled the order before it shipped, where is my refund",
        "do I have to pay for return shipping",
        "the shoes were the wrong size and I want to send them back",
        "you accepted my return but the money never came",
        "is it too late to return something I bought in January",
    ],
    "bug": [
        "the app crashes every time I open the settings page",
        "I get an error 500 when I try to upload a file",
        "the export button does nothing",
        "images don't load on the dashboard since the last update",
        "the search results are empty even though the data is there",
        "notifications arrive twice",
        "the page freezes when I scroll through the report",
        "dark mode makes the text unreadable on the calendar view",
        "saving a draft throws an unexpected error",
        "the numbers in the chart don't match the table",
        "after updating, the app won't start on my tablet",
        "the date picker shows the wrong month",
        "the password field lets me type but the submit button stays grey",
        "my uploaded photos appear rotated sideways",
        "the total at checkout adds the same item twice",
    ],
    "cancel": [
        "I want to cancel my subscription",
        "please close my account and delete my data",
        "how do I stop the automatic renewal",
        "I'd like to end my membership at the end of this billing period",
        "cancel my plan, I don't use it anymore",
        "is there a fee for cancelling before the contract ends",
        "I want to downgrade and then cancel next month",
        "remove my card and terminate the service",
        "how can I unsubscribe from the paid plan",
        "I'm moving to another provider, please cancel everything",
        "stop my trial before it turns into a paid subscription",
        "deactivate my account permanently",
        "I don't want to be charged again, end it now",
        "please terminate the contract when it expires",
        "how do I get rid of my account entirely",
    ],
    "feature_request": [
        "it would be great if I could export reports to Excel",
        "please add a dark mode to the mobile app",
        "could you support more than one user per account",
        "I'd love an integration with Google Calendar",
        "can you add keyboard shortcuts for the editor",
        "any plans to support two languages in the interface",
        "I wish I could schedule messages to send later",
        "please let us customise the invoice template",
        "an offline mode would make the app much more useful",
        "could the dashboard show weekly totals as well",
        "allow tagging items with colours, that would help a lot",
        "we need an API to pull our data automatically",
        "it would help if the reports had a print view",
        "can you add a way to archive old projects",
        "a widget for the home screen would be handy",
    ],
}
OPENERS = [
    "",
    "",
    "Hi, ",
    "Hello, ",
    "Hey team, ",
    "Good morning, ",
    "Quick question: ",
    "Urgent: ",
    "Hi there, ",
]
CLOSERS = [
    "",
    "",
    ".",
    ". Thanks!",
    ", thanks in advance.",
    ". Can you help?",
    "!",
    ". Please advise.",
    " :(",
]
NEW_TICKETS = [
    "Hi, my parcel still hasn't shown up and tracking is stuck",
    "you took the money from my card two times",
    "the app closes itself whenever I open my profile",
    "I need to get into my account but the reset link is broken",
    "it would be nice to have a weekly summary email",
]


TRAIN_PHRASINGS = 10  # per intent; the remaining phrasings are only in the test file


def make_tickets(split: str, per_intent: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, intent) rows: ``per_intent`` distinct tickets per intent from the split's phrasings."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    for intent, phrasings in INTENTS.items():
        pool = phrasings[:TRAIN_PHRASINGS] if split == "train" else phrasings[TRAIN_PHRASINGS:]
        seen: set[str] = set()
        while len(seen) < per_intent:
            text = rng.choice(OPENERS) + pool[len(seen) % len(pool)] + rng.choice(CLOSERS)
            text = text[0].upper() + text[1:]
            if text not in seen:
                seen.add(text)
                rows.append((text, intent))
    rng.shuffle(rows)
    return rows


def write_tickets(path: Path, split: str, per_intent: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "intent"])
        writer.writerows(make_tickets(split, per_intent, seed))
    return path


def run_demo(out: Path, progress: bool = True) -> None:
    import graft

    def say(message: str = "") -> None:
        print(message, flush=True)

    from graft.ownership import claim_folder

    claim_folder(out, command="demo")  # new, empty or an earlier demo's: nothing else is replaced
    data = write_tickets(out / "data" / "tickets.csv", "train", per_intent=40)
    test = write_tickets(out / "data" / "tickets_test.csv", "test", per_intent=10)
    say(f"1. wrote a support-ticket dataset: {data} ({len(INTENTS)} intents x 40 tickets)")
    say(f"   and a test file of unseen phrasings: {test} ({len(INTENTS)} x 10)")
    say("2. fitting the packaged all-MiniLM-L6-v2 with --strategy auto --budget 1m ...")
    from graft.config import RunConfig, StrategyConfig

    quick = RunConfig(strategy=StrategyConfig(kind="auto", budget="1m"))  # a demo, not a benchmark
    model = graft.fit(data, backbone="minilm", config=quick, label_col="intent", test=test, out=out,
                      overwrite=True, progress=progress)  # fmt: skip
    report = model.report_
    say(f"   strategy: {report.strategy['shipped']} — {report.strategy['shipped_reason']}")
    for row in report.strategy["candidates"]:  # every candidate auto considered, with its evidence
        seconds = report.timings.get(f"choose {row['strategy']}", 0.0)  # kept out of the bundle's record
        score = f"{row['score']:.3f} in {seconds:.0f}s" if row.get("score") is not None else ""
        status = "" if row["status"] == "scored" else row["status"]
        say(f"     {row['strategy']:<13} {score:<16} {status}".rstrip())
    test = report.test
    base = test.baselines["prior"]
    say(f"3. held-out test set ({test.n} tickets never used for training or model choice):")
    for name in ("accuracy", "macro_f1"):
        lo, hi = test.intervals[name]
        say(f"   {name:<9} {test.metrics[name]:.3f}  (95% interval {lo:.3f}-{hi:.3f})   "
            f"prior (chance) baseline {base[name]:.3f}")  # fmt: skip
    bundle = out / "bundle"
    say(f"4. bundle written to {bundle} (report: {bundle / 'report.html'})")
    loaded = graft.load(bundle)
    say("5. predictions of the reloaded bundle on new tickets:")
    proba = loaded.predict_proba(NEW_TICKETS)
    for text, p in zip(NEW_TICKETS, proba, strict=True):
        k = int(p.argmax())
        say(f"   {loaded.label_space[k]:<16} p={p[k]:.2f}  {text}")
    say(f"\nnext: graft predict {bundle} your_tickets.csv   |   graft evaluate {bundle} labeled.csv")
    sys.stdout.flush()
