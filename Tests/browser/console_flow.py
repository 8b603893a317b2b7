#!/usr/bin/env python3
"""Drives the console in headless Chromium (Debian's chromium and chromedriver, Selenium from
PyPI) through an operator's day: sign in, find the enrolled agent, lock it from its page, see
the agent acknowledge the lock, find the audit entry, open the compliance report; make a
group, move the device into it, lock the group's devices in bulk from the devices table; make
a notification rule (to a webhook and by mail) and a scheduled report, have the agent report
events, and see both delivered in the log; sign in as a directory account, let the
directory's laptop users sign in on every device and see one do so. Screenshots go to SCREENSHOTS. Every step asserts;
any failure exits non-zero with the reason.

Environment: CONSOLE (https://host:port), NAME, PASSWORD, DEVICE (the agent's device id),
AGENT_RUN (a command line that makes the agent check in once), AGENT_REPORT (one that makes
it report three malware.detected events), WEBHOOK (a URL that records what it is sent),
SCREENSHOTS (a folder; the webhook's signing key is written there too), CHROMIUM and
CHROMEDRIVER (paths); DIRECTORY_NAME and DIRECTORY_PASSWORD (a directory account whose group
maps to admin), AGENT_USER_AUTH (a command line that signs USER_NAME in on the agent's device,
reading USER_PASSWORD from its input).
"""
import os
import shlex
import subprocess
import sys

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def check(condition, message):
    if not condition:
        print("FAILED: " + message, file=sys.stderr)
        sys.exit(1)
    print("ok: " + message)


def navigate(browser, action):
    """Does what leads to a new page, then waits for the old page to be gone (a click
    returns before the browser has loaded what it asked for)."""
    old = browser.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(browser, 30).until(lambda _: gone(old))


def gone(element):
    """Whether `element` has left the document. chromedriver reports an element of a page
    that has just been replaced either as stale or, while the new document is attaching,
    as a node that "does not belong to the document"; both mean the navigation happened."""
    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise


console = os.environ["CONSOLE"]
device = os.environ["DEVICE"]
shots = os.environ["SCREENSHOTS"]

options = webdriver.ChromeOptions()
options.binary_location = os.environ["CHROMIUM"]
for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--ignore-certificate-errors", "--window-size=1280,900", "--no-first-run"]:
    options.add_argument(argument)
browser = webdriver.Chrome(service=Service(executable_path=os.environ["CHROMEDRIVER"]), options=options)
try:
    browser.get(console + "/")
    check("/login" in browser.current_url, "an anonymous visit lands on the sign-in page")
    browser.find_element(By.NAME, "name").send_keys(os.environ["NAME"])
    browser.find_element(By.NAME, "password").send_keys(os.environ["PASSWORD"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click)
    heading = browser.find_element(By.TAG_NAME, "h1").text
    check(heading == "Dashboard", "signing in opens the dashboard (at %s: %s; %s)" % (browser.current_url, heading,
          [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error")]))
    check(browser.find_element(By.ID, "devices-total").text == "1", "the dashboard counts the enrolled device")
    browser.save_screenshot(os.path.join(shots, "dashboard.png"))

    navigate(browser, browser.find_element(By.LINK_TEXT, "Devices").click)
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "a[href='/devices/%s']" % device).click)
    check(browser.find_element(By.ID, "device-state").text == "active", "the device page shows the device active")
    navigate(browser, browser.find_element(By.ID, "lock").click)
    check("The lock command is queued" in browser.page_source, "locking says the command is queued")
    states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#commands .command-state")]
    check(states == ["pending"], "the lock command is pending (%s)" % states)

    # The agent checks in: it receives the lock, then reports it done.
    for _ in range(2):
        subprocess.run(shlex.split(os.environ["AGENT_RUN"]), check=True, capture_output=True)
    navigate(browser, browser.refresh)
    states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#commands .command-state")]
    check(states == ["acknowledged"], "the agent acknowledged the lock (%s)" % states)
    check(browser.find_element(By.ID, "device-state").text == "locked", "the device is shown locked")

    browser.get(console + "/audit?action=command.issue")
    actions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#audit .audit-action")]
    check(actions == ["command.issue"], "the audit log has the lock (%s)" % actions)
    check(("operator:" + os.environ["NAME"]) in browser.find_element(By.ID, "audit").text, "the audit entry names the operator")

    browser.get(console + "/reports/compliance")
    check(browser.find_element(By.TAG_NAME, "h1").text == "Compliance", "the compliance report opens")
    check(len(browser.find_elements(By.CSS_SELECTOR, "svg rect.bar")) >= 1, "the report has its chart")
    browser.save_screenshot(os.path.join(shots, "compliance-report.png"))

    # A group, and the device moved into it from its page.
    browser.get(console + "/groups")
    browser.find_element(By.ID, "group-name").send_keys("Laptops")
    navigate(browser, browser.find_element(By.ID, "create-group").click)
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#groups .group-name")]
    check(names == ["Laptops"], "the group is made (%s)" % names)
    browser.get(console + "/devices/" + device)
    Select(browser.find_element(By.ID, "move-group")).select_by_visible_text("Laptops")
    navigate(browser, browser.find_element(By.ID, "move").click)
    check(browser.find_element(By.ID, "device-groups").text == "Laptops", "the device is in the group")

    # The devices table filtered by the group; its devices locked in one go, after a confirmation.
    browser.get(console + "/devices")
    Select(browser.find_element(By.NAME, "group")).select_by_visible_text("Laptops")
    navigate(browser, browser.find_element(By.ID, "filter").click)
    check(browser.find_element(By.ID, "device-count").text == "1", "the filter finds the group's device")
    browser.find_element(By.CSS_SELECTOR, "input[name='device'][value='%s']" % device).click()
    Select(browser.find_element(By.ID, "bulk-action")).select_by_value("lock")
    navigate(browser, browser.find_element(By.ID, "bulk-apply").click)
    heading = browser.find_element(By.TAG_NAME, "h1").text
    check(heading == "Lock 1 device?", "the bulk action asks to confirm, naming the count (%s)" % heading)
    navigate(browser, browser.find_element(By.ID, "confirm").click)
    check("Lock queued for 1 device." in browser.page_source, "the bulk lock is queued")
    browser.save_screenshot(os.path.join(shots, "devices.png"))

    # A notification rule to the webhook and by mail, and a scheduled report to the webhook.
    browser.get(console + "/notifications")
    browser.find_element(By.ID, "rule-name").send_keys("Malware burst")
    Select(browser.find_element(By.ID, "rule-kind")).select_by_value("events")
    browser.find_element(By.ID, "rule-event-kind").send_keys("malware.detected")
    browser.find_element(By.ID, "rule-threshold").send_keys("2")
    browser.find_element(By.ID, "rule-window").send_keys("60")
    browser.find_element(By.ID, "rule-webhook").send_keys(os.environ["WEBHOOK"])
    browser.find_element(By.ID, "rule-email").send_keys("soc@example.test")
    navigate(browser, browser.find_element(By.ID, "create-rule").click)
    secret = browser.find_element(By.ID, "webhook-secret").text
    check(secret.startswith("whsec_"), "the webhook's signing key is shown once")
    with open(os.path.join(shots, "webhook-secret.txt"), "w") as out:
        out.write(secret)
    browser.find_element(By.ID, "schedule-name").send_keys("Daily compliance")
    Select(browser.find_element(By.ID, "schedule-report")).select_by_value("compliance")
    browser.find_element(By.ID, "schedule-webhook").send_keys(os.environ["WEBHOOK"])
    navigate(browser, browser.find_element(By.ID, "create-schedule").click)
    rules = browser.find_element(By.ID, "rules").text
    check("Malware burst" in rules and "Daily compliance" in rules, "both rules are listed")

    # The agent reports a burst; the rule fires, and the log shows every delivery made.
    subprocess.run(shlex.split(os.environ["AGENT_REPORT"]), check=True, capture_output=True)

    def delivered(_):
        browser.get(console + "/notifications")
        states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#deliveries .delivery-state")]
        return len([s for s in states if s.startswith("delivered")]) >= 3

    WebDriverWait(browser, 60, poll_frequency=0.5).until(delivered)
    check(True, "the rule's webhook and mail, and the scheduled report, are delivered")
    browser.save_screenshot(os.path.join(shots, "notifications.png"))

    # An operator from the directory: signs out, and signs in as a directory account whose
    # group maps to admin; lets the directory's laptop users sign in on every device; a user
    # signs in on the agent's device, and the users page shows it.
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click)
    browser.find_element(By.NAME, "name").send_keys(os.environ["DIRECTORY_NAME"])
    browser.find_element(By.NAME, "password").send_keys(os.environ["DIRECTORY_PASSWORD"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click)
    who = browser.find_element(By.CSS_SELECTOR, "header .who").text
    check(browser.find_element(By.TAG_NAME, "h1").text == "Dashboard" and who == os.environ["DIRECTORY_NAME"] + " (admin)",
          "a directory account signs in with the role of its group (%s)" % who)
    browser.get(console + "/account")
    check("from the directory" in browser.page_source and "change-password" not in browser.page_source,
          "the account page says the password is the directory's")
    navigate(browser, browser.find_element(By.LINK_TEXT, "Users").click)
    Select(browser.find_element(By.ID, "grant-group")).select_by_visible_text("Every device")
    Select(browser.find_element(By.ID, "grant-kind")).select_by_value("group")
    browser.find_element(By.ID, "grant-name").send_keys("laptop-users")
    navigate(browser, browser.find_element(By.ID, "grant").click)
    grants = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#grants .grant-who")]
    check(grants == ["Directory group laptop-users"], "the grant is listed (%s)" % grants)
    subprocess.run(shlex.split(os.environ["AGENT_USER_AUTH"]), check=True, capture_output=True, input=os.environ["USER_PASSWORD"] + "\n", text=True)
    navigate(browser, browser.refresh)
    users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#users .user-name")]
    # The directory's users are there from the sync at start; the one who signed in too.
    check(os.environ["USER_NAME"] in users and os.environ["DIRECTORY_NAME"] in users, "the directory's users are listed (%s)" % users)
    check("Directory sync: done" in browser.find_element(By.ID, "sync-state").text, "the sync's state is shown")
    navigate(browser, browser.find_element(By.LINK_TEXT, os.environ["USER_NAME"]).click)
    check(device in browser.find_element(By.ID, "sign-ins").text, "the user's page shows the sign-in on the device")
    browser.save_screenshot(os.path.join(shots, "users.png"))
finally:
    browser.quit()
