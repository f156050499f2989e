"""b24q's doors, where people and other programs meet it: the `b24q` command (cli/), the HTTP app (http/: the
producers' intake, the Bitrix24 application's event handlers, the operator's console), the application's
lifecycle (lifecycle/: install, update, uninstall), the demo (and its report). They use tasks/ and workers/;
neither knows them."""
