#!/usr/bin/env python3
"""Drives the console in headless Chromium (Debian's chromium and chromedriver, Selenium from
PyPI) through an operator's round trip: sign in, find the enrolled agent, lock it from its
page, see the agent acknowledge the lock, find the audit entry, open the compliance report.
Screenshots of the dashboard and the report go to SCREENSHOTS. Every step asserts; any
failure exits non-zero with the reason.

Environment: CONSOLE (https://host:port), NAME, PASSWORD, DEVICE (the agent's device id),
AGENT_RUN (a command line that makes the agent check in once), SCREENSHOTS (a folder),
CHROMIUM and CHROMEDRIVER (paths).
"""
import os
import shlex
import subprocess
import sys

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


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
    check(browser.current_url.endswith("/login"), "an anonymous visit lands on the sign-in page")
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
finally:
    browser.quit()
