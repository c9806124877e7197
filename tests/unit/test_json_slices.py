"""A long answer encoded a slice at a time (node.web.json_response_sliced) is the same text as one encoded
whole, key order and all; an answer without the list is encoded whole."""

from __future__ import annotations

from node.web import json_response, json_response_sliced


async def test_a_sliced_answer_is_the_same_text_as_one_encoded_whole():
    answer = {"resource": "370321-0001", "total": 12_001,
              "results": [{"key": f"37032119800101{i:04d}", "found": i % 3 == 0, "match": False,
                           "fields": {"姓名": i % 2 == 0, "住址": None}} for i in range(12_001)],
              "after": "末尾"}
    whole, sliced = json_response(answer), await json_response_sliced(answer, "results", slice_len=5_000)
    assert sliced.text == whole.text and sliced.content_type == whole.content_type == "application/json"
    assert sliced.status == 200


async def test_small_slices_an_empty_list_and_none_at_all_give_the_same_text():
    for answer in ({"results": [1, 2, 3]}, {"results": []}, {"error": {"code": "NOT_FOUND"}}):
        assert (await json_response_sliced(answer, "results", slice_len=2)).text == json_response(answer).text
