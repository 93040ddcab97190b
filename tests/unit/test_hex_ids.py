"""Ids in hex in every view, reprs included: an id in a repr can be matched by eye against the tables, the
JSON, the keys and the logs. A hex literal is still the same number, and still Python."""

from __future__ import annotations

from dyndisc import Instance, MetadataEntry
from dyndisc._cards import EventChannel, ModelCard


def test_reprs_show_ids_in_hex() -> None:
    instance = Instance(namespace="ns", component="c", endpoint="e", instance_id=0x694D98147D54BE25)
    assert "instance_id=0x694d98147d54be25" in repr(instance)
    assert str(0x694D98147D54BE25) not in repr(instance)

    card = ModelCard("ns", "c", "e", 0xAB12, {"display_name": "llama"})
    assert repr(card) == (
        "ModelCard(namespace='ns', component='c', endpoint='e', instance_id=0xab12, "
        "card={'display_name': 'llama'}, lora=None)"
    )
    entry = card.to_entry()
    assert repr(entry) == (
        "MetadataEntry(bucket='v1/mdc', key='ns/c/e/ab12', value={'type': 'Model', 'namespace': 'ns', "
        "'component': 'c', 'endpoint': 'e', 'instance_id': 0xab12, 'card_json': {'display_name': 'llama'}})"
    )
    assert entry.value["instance_id"] == 0xAB12  # the stored value itself is untouched: a JSON number

    channel = EventChannel("ns", "c", "e", "kv-events", 0x1F, {"kind": "Zmq"})
    assert "publisher_id=0x1f" in repr(channel)
    assert "'instance_id': 0x1f" in repr(channel.to_entry())


def test_an_entry_whose_value_is_not_an_id_keeps_its_repr() -> None:
    entry = MetadataEntry("v1/mine", "k", {"count": 10, "nested": {"instance_id": True, "list": [1, [2]]}})
    assert repr(entry) == (
        "MetadataEntry(bucket='v1/mine', key='k', value={'count': 10, "
        "'nested': {'instance_id': True, 'list': [1, [2]]}})"
    )
