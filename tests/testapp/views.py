"""Views for routing tests: each reports the port of the server that answered each read."""

from django.db.models.expressions import RawSQL
from django.http import JsonResponse

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
