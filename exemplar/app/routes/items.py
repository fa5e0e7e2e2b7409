"""A pool's items: read one, page through them, delete some."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.items import ItemOut, ItemPageOut, ItemsDeleted, ItemsDeleteIn
from exemplar.app.services import ADMIN, QUERY, PoolsDep
from exemplar.retrieval.pools import DeletedItems, MAX_PAGE, StoredItem

router = APIRouter(prefix="/v1/pools", tags=["items"], responses={
    400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 409: {"model": ErrorEnvelope},
})


def _item_out(item: StoredItem) -> ItemOut:
    return ItemOut.model_construct(**vars(item))


def _deleted(pool: str, result: DeletedItems) -> ItemsDeleted:
    return ItemsDeleted(pool=pool, version=result.version, deleted=result.deleted, missing=result.missing)


@router.get("/{pool}/items", summary="Page through the current version's items, filtered by label and domain",
            dependencies=[QUERY])
def list_items(
    pool: str, pools: PoolsDep,
    label: Annotated[list[str], Query(description="Only these labels (repeatable).")] = [],  # noqa: B006 - FastAPI copies it
    domain: Annotated[list[str], Query(description="Only these domains (repeatable).")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$",
                                        description="next_cursor of the previous page: where to continue.")] = None,
) -> ItemPageOut:
    page = pools.list_items(pool, labels=label or None, domains=domain or None, limit=limit, cursor=cursor)
    return ItemPageOut(pool=pool, version=page.version, items=[_item_out(i) for i in page.items],
                       matching=page.matching, next_cursor=page.next_cursor)


@router.get("/{pool}/items/{item_id}", summary="One item of the current version", dependencies=[QUERY])
def get_item(pool: str, item_id: str, pools: PoolsDep) -> ItemOut:
    return _item_out(pools.item(pool, item_id))


@router.delete("/{pool}/items/{item_id}", summary="Delete one item; writes a new version", dependencies=[ADMIN])
def delete_item(pool: str, item_id: str, pools: PoolsDep) -> ItemsDeleted:
    pools.item(pool, item_id)  # 404 for an id the pool does not hold
    return _deleted(pool, pools.delete_items(pool, [item_id]))


@router.post("/{pool}/items/delete", summary="Delete many items as one new version; ids not held are reported",
             dependencies=[ADMIN])
def delete_items(pool: str, body: ItemsDeleteIn, pools: PoolsDep) -> ItemsDeleted:
    return _deleted(pool, pools.delete_items(pool, body.ids))
