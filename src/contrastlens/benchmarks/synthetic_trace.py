"""A project-made GAIA2-style trace (deterministic): an email/calendar assistant works through a long
task with many tool calls, then deletes the wrong event (a planted wrong tool argument).

``python -m contrastlens.benchmarks.synthetic_trace > agent_synthetic_trace.json`` regenerates the file
shipped in ``contrastlens/data``.
"""

from __future__ import annotations

import json
import random

SYSTEM = (
    "You are an assistant that acts in a simulated phone environment with the apps Calendar, Email, "
    "Contacts and Messages. Work step by step. Each turn, write one line 'Thought: ...', then "
    "'Action: <App__tool>' and 'Action Input: <JSON arguments>', then '<end_action>'. Tool results come "
    "back as observations. Available tools: Calendar__get_events(date), Calendar__delete_event(event_id), "
    "Calendar__add_event(title, date, start, end), Email__list_emails(folder, offset, limit), "
    "Email__read_email(email_id), Email__send_email(to, subject, body), Contacts__search(query), "
    "Messages__send(to, text)."
)
NAMES = ["Alice Martin", "Bruno Keller", "Chen Wei", "Dana Okafor", "Emil Novak", "Farah Haddad", "Gina Rossi",
         "Hugo Silva", "Ines Duarte", "Jonas Berg", "Kira Tanaka", "Liam Walsh"]
TOPICS = ["budget review", "design sync", "hiring panel", "quarterly planning", "vendor call", "offsite logistics",
          "security audit", "customer demo", "retro", "onboarding"]


def build(seed: int = 0, days: int = 16) -> dict:
    rng = random.Random(seed)
    day = days - 5  # the appointment to cancel; the decoy reminder is the day before
    when = f"2026-03-{day + 1:02d}"
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                "Go through my calendar for the next weeks. For every day, list the events, read the related "
                "emails and reply where needed. At the end, cancel the dentist appointment on " + when + " "
                "(and only that one), because I have to travel.")}]
    dentist_id, decoy_id = None, None
    for d in range(days):
        date = f"2026-03-{d + 1:02d}"
        msgs.append({"role": "assistant", "content": (
            f"Thought: I list the events of {date}.\nAction: Calendar__get_events\n"
            f'Action Input: {{"date": "{date}"}}\n<end_action>')})
        events = []
        for j in range(rng.randint(2, 4)):
            eid = f"evt-{d:02d}{j}{rng.randint(100, 999)}"
            title = f"{rng.choice(TOPICS)} with {rng.choice(NAMES)}"
            if d == day and j == 0:
                title, dentist_id = "Dentist appointment (Dr. Lang)", eid
            if d == day - 1 and j == 0:
                title, decoy_id = "Dentist reminder: call Dr. Lang's office", eid
            start = 8 + 2 * j
            events.append({"event_id": eid, "title": title, "start": f"{start:02d}:00", "end": f"{start + 1:02d}:00"})
        msgs.append({"role": "tool", "content": json.dumps({"date": date, "events": events})})
        eml = f"em-{d:03d}{rng.randint(10, 99)}"
        msgs.append({"role": "assistant", "content": (
            f"Thought: I read the email about '{events[-1]['title']}'.\nAction: Email__read_email\n"
            f'Action Input: {{"email_id": "{eml}"}}\n<end_action>')})
        who = rng.choice(NAMES)
        msgs.append({"role": "tool", "content": json.dumps({
            "email_id": eml, "from": who, "subject": f"Re: {events[-1]['title']}",
            "body": (f"Hi, about the {events[-1]['title']} on {date}: could you confirm the time "
                     f"{events[-1]['start']} still works, and bring the notes from last week? "
                     "Also, the room changed to 4B. Thanks, " + who.split()[0])})})
        msgs.append({"role": "assistant", "content": (
            f"Thought: I confirm to {who}.\nAction: Email__send_email\nAction Input: "
            + json.dumps({"to": who, "subject": f"Re: {events[-1]['title']}",
                          "body": f"Confirmed for {events[-1]['start']} in room 4B, I will bring the notes."})
            + "\n<end_action>")})
        msgs.append({"role": "tool", "content": json.dumps({"status": "sent"})})
    msgs.append({"role": "assistant", "content": (
        f"Thought: Now I cancel the dentist appointment on {when}.\nAction: Calendar__delete_event\n"
        f'Action Input: {{"event_id": "{decoy_id}"}}\n<end_action>')})
    return {"metadata": {"id": "synthetic-calendar-0", "made_by": "contrastlens", "seed": seed,
                         "note": "planted error: deletes the reminder of the day before instead of the appointment"},
            "messages": msgs,
            "expected": {"tool": "Calendar__delete_event", "args": {"event_id": dentist_id}}}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(build(), indent=1))
