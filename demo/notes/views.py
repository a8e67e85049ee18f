"""The demo's JSON API. Every read answer says which server ran it (``served_by``: its cluster_name).

Nothing here mentions replicas: the router sends reads to a replica that is fresh enough for this
session and writes to the primary. ``report`` opts into possibly-stale reads with ``use_replica()``.
"""

from __future__ import annotations

from django.db import connections
from django.db.models import Count
from django.http import Http404, HttpRequest, JsonResponse

from replicarouter import status, use_replica
from replicarouter.observability.report import exit_code

from .models import Note, Notebook, Tag

ENDPOINTS = {
    "POST /login/?name=NAME": "start a session as NAME (a signed cookie)",
    "POST /notes/?title=T&body=B&tags=a,b": "add a note to your notebook (a write: primary)",
    "GET /notes/": "your notes (a read: a replica that has your last write, else the primary)",
    "GET /notes/?owner=NAME": "someone's notes (a plain read: any usable replica)",
    "GET /notes/ID/": "one note",
    "GET /report/": "notes per notebook with use_replica() (may lag: a report)",
    "GET /status/": "replicarouter.status(): nodes, lag, pools (what manage.py replicastatus shows)",
    "GET /healthz": "200 unless replicastatus would exit 2 (critical)",
    "GET /metrics": "Prometheus metrics (with the prometheus extra)",
}


def served_by(alias: str) -> str:
    """Return the name of the server behind this request's connection of ``alias`` (its cluster_name)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(nullif(current_setting('cluster_name'), ''), "
            "inet_server_addr()::text || ':' || inet_server_port())"
        )
        return str(cursor.fetchone()[0])


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"app": "replicarouter demo", "endpoints": ENDPOINTS})


def login(request: HttpRequest) -> JsonResponse:
    name = (request.POST.get("name") or request.GET.get("name") or "").strip()[:50]
    if not name:
        return JsonResponse({"error": "name required"}, status=400)
    request.session["owner"] = name
    return JsonResponse({"owner": name})


def notes(request: HttpRequest) -> JsonResponse:
    owner = request.session.get("owner")
    if request.method == "POST":
        if not owner:
            return JsonResponse({"error": "POST /login/?name=NAME first"}, status=403)
        data = request.POST or request.GET
        notebook, _ = Notebook.objects.get_or_create(owner=owner)
        note = Note.objects.create(
            notebook=notebook, title=data.get("title", "untitled"), body=data.get("body", "")
        )
        names = [t.strip()[:30] for t in data.get("tags", "").split(",") if t.strip()]
        if names:
            note.tags.add(*(Tag.objects.get_or_create(name=name)[0] for name in names))
        return JsonResponse(
            {"id": note.pk, "owner": owner, "written_to": served_by(note._state.db)}, status=201
        )
    wanted = request.GET.get("owner") or owner
    if not wanted:
        return JsonResponse({"error": "POST /login/?name=NAME first, or GET /notes/?owner=NAME"}, status=403)
    queryset = Note.objects.filter(notebook__owner=wanted)
    ids = list(queryset.values_list("id", flat=True)[:100])
    return JsonResponse({"owner": wanted, "count": len(ids), "ids": ids, "served_by": served_by(queryset.db)})


def note(request: HttpRequest, note_id: int) -> JsonResponse:
    queryset = Note.objects.filter(pk=note_id).select_related("notebook").prefetch_related("tags")
    found = list(queryset)
    if not found:
        raise Http404("no such note")
    item = found[0]
    return JsonResponse(
        {
            "id": item.pk,
            "owner": item.notebook.owner,
            "title": item.title,
            "body": item.body,
            "tags": [t.name for t in item.tags.all()],
            "served_by": served_by(queryset.db),
        }
    )


def report(request: HttpRequest) -> JsonResponse:
    with use_replica():  # a report accepts some staleness: keep it off the primary
        queryset = Notebook.objects.annotate(n=Count("notes")).order_by("owner")
        rows = {nb.owner: nb.n for nb in queryset}
        return JsonResponse({"notes_per_owner": rows, "served_by": served_by(queryset.db)})


def cluster_status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(status())


def healthz(request: HttpRequest) -> JsonResponse:
    code = exit_code(status())
    return JsonResponse({"exit_code": code}, status=503 if code == 2 else 200)
