"""What a person or a client sees at an address the service does not have."""

from __future__ import annotations


def test_an_unknown_api_path_answers_the_apis_json_404(api) -> None:  # type: ignore[no-untyped-def]
    for path in ("/nope", "/webhooks/wh_x/nope", "/events/evt_x/deliveries/more"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json == {
            "error": {"code": "not_found", "message": "no such resource", "fields": {}}
        }


def test_a_wrong_method_on_the_api_answers_json(api) -> None:  # type: ignore[no-untyped-def]
    response = api.delete("/event-types")
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"


def test_a_missing_dashboard_page_keeps_the_layout_and_offers_a_way_back(user) -> None:  # type: ignore[no-untyped-def]
    for path in (
        "/settings/nope",
        "/settings/webhooks/wh_missing",
        "/settings/webhooks/logs/dlv_x",
    ):
        response = user.get(path)
        assert response.status_code == 404
        assert "Page not found" in response.text
        assert 'aria-label="Settings"' in response.text  # the navigation is there
        assert "Go to your webhooks" in response.text


def test_counts_read_as_words(user, api, webhook, service, receiver) -> None:  # type: ignore[no-untyped-def]
    api.publish(data={"title": "Disk full"})
    service.run_until(lambda: receiver.requests)
    page = user.get("/settings/webhooks").text
    assert "1 attempt<" in page and "1 attempts" not in page
