"""Views for routing tests: each reports the port of the server that answered each read."""

from collections.abc import Callable

from django.db.models.expressions import RawSQL
from django.http import JsonResponse

from replicarouter import mark_written, use_primary

from .models import Item


def _port() -> int:
    return int(Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[0])


def write_then_read(request):
    before = _port()
    Item.objects.create(name="from view")
    return JsonResponse({"before": before, "after": _port()})


async def async_write_then_read(request):
    before = await _aport()
    await Item.objects.acreate(name="from async view")
    return JsonResponse({"before": before, "after": await _aport()})


async def _aport() -> int:
    row = (
        await Item.objects.annotate(port=RawSQL("inet_server_port()", ()))
        .values_list("port", flat=True)
        .afirst()
    )
    return int(row)


def sticky_write(request):
    """Write a row (the session's write) and return its id; start a session if there is none."""
    request.session["seen"] = True
    item = Item.objects.create(name=request.GET.get("name", "x"))
    return JsonResponse({"id": item.pk})


def sticky_read(request):
    """Read one row by id through the router: was it there, and which server answered."""
    rows = list(
        Item.objects.filter(pk=int(request.GET["id"]))
        .annotate(port=RawSQL("inet_server_port()", ()))
        .values_list("port", flat=True)
    )
    if rows:
        return JsonResponse({"found": True, "port": rows[0]})
    port = Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True).first()
    return JsonResponse({"found": False, "port": port})


LOCKS = {"share": "FOR SHARE", "key-share": "FOR KEY SHARE"}


def lock_then_read(request):
    """Lock a row with a raw ``SELECT … FOR SHARE`` (or ``KEY SHARE``), then read: which server answered."""
    from django.db import connection

    lock = LOCKS[request.GET["lock"]]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM testapp_item WHERE id = %s {lock}", [int(request.GET["id"])])
    return JsonResponse({"after": _port()})


def load_read(request):
    """A plain read (no session, no write): which server answered."""
    return JsonResponse({"port": _port()})


def load_transaction(request):
    """Two inserts in one transaction with a pause between them (to be cut mid-transaction)."""
    from django.db import connection, transaction

    tag = request.GET["tag"]
    with transaction.atomic():
        Item.objects.create(name=f"{tag}-first")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [float(request.GET.get("sleep", "2"))])
        Item.objects.create(name=f"{tag}-second")
    return JsonResponse({"ok": True})


def load_hold(request):
    """Hold a primary connection for a while (to exhaust the pool)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [float(request.GET.get("seconds", "1"))])
    return JsonResponse({"ok": True})


def session_put(request):
    """Change only the session (Django's database sessions: SessionMiddleware saves it after the view)."""
    request.session["cart"] = request.GET["v"]
    return JsonResponse({"ok": True})


def session_get(request):
    """Return what the session holds (loaded through the router: a replica unless the session wrote)."""
    return JsonResponse({"cart": request.session.get("cart")})


def log_in(request):
    """Log the user named ``u`` in (``login()`` cycles the session key; the session is saved after)."""
    from django.contrib.auth import login
    from django.contrib.auth.models import User

    with use_primary():
        user = User.objects.get(username=request.GET["u"])
    login(request, user)
    return JsonResponse({"ok": True})


def whoami(request):
    """Return the logged-in user's name ("" when anonymous)."""
    return JsonResponse({"user": request.user.username if request.user.is_authenticated else ""})


#: called by ``write_then_hook`` after its write committed (a test installs the fault it needs)
AFTER_WRITE: list[Callable[[], None]] = []


def write_then_hook(request):
    """Write a row, run the test's hooks (faults after the commit), return the row's id."""
    item = Item.objects.create(name=request.GET.get("name", "hooked"))
    for hook in AFTER_WRITE:
        hook()
    return JsonResponse({"id": item.pk})


def unseen_write(request):
    """Insert a row through a connection of its own (no parser sees it); ``mark`` says mark_written()."""
    import psycopg2
    from django.db import connections

    params = connections["default"].get_connection_params()
    conn = psycopg2.connect(**params)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO testapp_item (name, n) VALUES (%s, 0) RETURNING id", [request.GET["name"]]
            )
            item_id = cursor.fetchone()[0]
    finally:
        conn.close()
    if request.GET.get("mark"):
        mark_written()
    return JsonResponse({"id": item_id})


#: raw SQL a test runs in ``raw_write`` (never taken from the request: tests only)
RAW_SQL: dict[str, str] = {}


def raw_write(request):
    """Run the test's raw SQL ``RAW_SQL[k]`` through ``django.db.connection``; return its first row."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(RAW_SQL[request.GET["k"]])
        row = cursor.fetchone() if cursor.description else None
    return JsonResponse({"row": list(row) if row else None})


def raw_read(request):
    """Run the test's check ``RAW_SQL[k]`` on the alias the router picks for a read; return its value."""
    from django.db import connections, router

    alias = router.db_for_read(Item)
    with connections[alias].cursor() as cursor:
        cursor.execute(RAW_SQL[request.GET["k"]])
        value = cursor.fetchone()[0]
    return JsonResponse({"value": value, "alias": alias})
