"""b24q's HTTP side, one ASGI app (`edges.http.app:app`, `b24q serve`): the Bitrix24 application's install
and event handlers (`appside`), the intake where producers in any language post jobs (`intake`, /v1, behind
API keys), the operator's console (`console`), health and metrics. Stateless: every instance shares Redis, so
any number run behind a load balancer."""
