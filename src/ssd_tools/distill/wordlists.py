"""Word lists for the synthetic distillation prompts (written for this project).

Kept apart from the templates in `prompts.py` so both stay readable. Nothing here comes from
Spec-Bench; the categories only mirror the kinds of request a chat model sees."""

# Lists are "|"-joined strings: one item per line would triple the file.
# ruff: noqa: SIM905

TOPICS = (
    "climate change|remote work|urban gardening|electric cars|public libraries|space "
    "travel|social media|healthy sleep|learning a language|renewable energy|ancient "
    "Rome|coffee|volunteering|video games|the ocean|artificial intelligence|minimalism|public "
    "transport|bees|chess|mountain hiking|recycling|jazz music|online privacy|the printing "
    "press|marathon training|street food|friendship|time management|board "
    "games|rainforests|smartphones|the history of money|museums|photography|cooking at home|city "
    "parks|migration of birds|the Olympic Games|solar panels|homeschooling|the internet|libraries"
    " of the future|small businesses|desert landscapes|meditation|robots in factories|tea"
).split("|")

FORMS = (
    "a short story|a poem|a blog post|a persuasive essay|a product description|a formal email|a "
    "speech|a diary entry|a news article|a haiku|a limerick|a letter to a friend|a short "
    "dialogue|a movie plot summary|a job advertisement|a restaurant review|a motivational "
    "message|a list of tips|a travel guide paragraph"
).split("|")

PERSONAS = (
    "a pirate captain|a medieval knight|a detective from the 1920s|a friendly robot|a famous "
    "chef|a tour guide in Paris|a wise old wizard|a sports coach|an astronaut on the Moon|a "
    "museum curator|a grumpy cat|a startup founder|a Shakespearean actor|a kindergarten teacher|a"
    " park ranger|a time traveler from the year 3000|a doctor"
).split("|")

QUESTIONS = (
    "What do you enjoy most about your work?|How would you spend a free afternoon?|What advice "
    "would you give to a young person?|What is your biggest fear?|Describe your typical "
    "morning.|What do you think about modern technology?|Tell me about your greatest "
    "adventure.|How do you deal with a difficult day?|What would you change about the "
    "world?|Which book would you recommend and why?"
).split("|")

CONCEPTS = (
    "photosynthesis|entropy|inflation|the water cycle|black holes|natural selection|supply and "
    "demand|DNA replication|plate tectonics|the greenhouse effect|vaccines|compound interest|the "
    "Pythagorean theorem|electric circuits|gravity|the immune system|prime numbers|machine "
    "learning|blockchain|nuclear fusion|the scientific method|democracy|the Renaissance|the "
    "Industrial Revolution|existentialism|opportunity cost|Newton's laws of motion|the periodic "
    "table|climate zones|recursion|encryption|probability|the French Revolution|impressionism|the"
    " Cold War|stoicism|globalization|osmosis|sound waves|quantum tunneling|the speed of "
    "light|human memory|tides"
).split("|")

CODE_TASKS = (
    "reverses a string|checks whether a number is prime|returns the n-th Fibonacci number|counts "
    "the vowels in a sentence|merges two sorted lists|removes duplicates from a list|finds the "
    "largest element of an array|checks whether a word is a palindrome|computes the factorial of "
    "a number|sorts a list of dictionaries by a key|reads a CSV file and prints the average of a "
    "column|converts Celsius to Fahrenheit|finds the longest word in a text|flattens a nested "
    "list|implements binary search|counts how often each word occurs in a file|validates an email"
    " address|computes the greatest common divisor of two numbers|implements a simple stack "
    "class|returns all permutations of a string|transposes a matrix|checks balanced parentheses"
).split("|")

LANGUAGES = ("Python", "Python", "Python", "JavaScript", "C++", "Java", "Rust", "Go")

NAMES = (
    "Anna|Ben|Carla|David|Emma|Felix|Grace|Hassan|Ines|James|Kofi|Lena|Mateo|Nora|Omar|Priya|Quinn|Rosa|Sam|Tara|Umar|Vera|Wei|Yusuf|Zoe"
).split("|")

ITEMS = (
    "apples|pencils|stickers|cookies|marbles|books|cupcakes|stamps|oranges|toy "
    "cars|flowers|eggs|cards|candles|shirts"
).split("|")

COUNTRIES = (
    "France|Japan|Brazil|Canada|Egypt|India|Kenya|Mexico|Norway|Peru|Italy|Spain|Germany|Australia|Argentina|Turkey|Vietnam|Poland|Greece|Chile"
).split("|")

FACT_QUESTIONS = (
    "What is the capital of {country}?|What language is spoken in {country}?|What is the currency"
    " of {country}?|Who invented the {invention}?|When was the {invention} invented?|What is the "
    "tallest mountain in {country}?|Who wrote the novel {book}?|What is {concept}?|Where does the"
    " river {river} flow?|How many people live in {country}?|Who was the first president of "
    "{country}?|What is the national sport of {country}?|Who discovered {discovery}?"
).split("|")

INVENTIONS = (
    "telephone|light bulb|airplane|printing press|steam "
    "engine|radio|television|computer|telescope|microscope|bicycle|camera"
).split("|")

BOOKS = (
    "Pride and Prejudice|Moby Dick|War and Peace|Don Quixote|The "
    "Odyssey|Frankenstein|Dracula|Jane Eyre|Great Expectations|Crime and Punishment"
).split("|")

RIVERS = ("Nile|Amazon|Danube|Rhine|Mississippi|Ganges|Thames|Volga|Yangtze").split("|")

DISCOVERIES = (
    "penicillin|gravity|radioactivity|the electron|America|insulin|the double helix|oxygen|X-rays"
).split("|")

# German sentences are assembled from these parts for translation prompts.
DE_SUBJECTS = (
    "Die Regierung|Der Bürgermeister|Viele Menschen|Die Polizei|Das Unternehmen|Meine "
    "Schwester|Die Schüler|Der Trainer|Die Ärzte|Ein junger Mann|Die Stadt|Die Bank|Die "
    "Forscher|Der Präsident|Die Nachbarn|Das Museum|Die Firma|Unsere Familie|Der Verein|Die "
    "Lehrerin"
).split("|")

DE_VERBS = (
    "hat gestern angekündigt, dass|erklärte am Montag, dass|glaubt, dass|berichtete, dass|hofft, "
    "dass|befürchtet, dass|hat bestätigt, dass|sagte in einem Interview, dass"
).split("|")

DE_CLAUSES = (
    "die Preise im nächsten Jahr steigen werden|die neue Brücke bald eröffnet wird|viele "
    "Arbeitsplätze verloren gegangen sind|das Wetter am Wochenende besser wird|die Schulen länger"
    " geöffnet bleiben|mehr Geld in Bildung investiert werden soll|der Zug wegen eines Unfalls "
    "Verspätung hatte|die Wirtschaft langsam wächst|die Wahl im Herbst stattfinden wird|neue "
    "Wohnungen in der Innenstadt gebaut werden|die Mannschaft das Spiel verloren hat|die Kosten "
    "für Energie gesunken sind|das Krankenhaus mehr Personal braucht|der Park im Sommer renoviert"
    " wird|die Ausstellung tausende Besucher angezogen hat|die Steuern nicht erhöht werden"
).split("|")

DE_SIMPLE = (
    "Ich gehe jeden Morgen mit meinem Hund spazieren.|Das Essen in diesem Restaurant ist "
    "ausgezeichnet.|Wir haben im Urlaub viele alte Kirchen besucht.|Morgen wird es in Berlin "
    "regnen.|Der Film hat mir überhaupt nicht gefallen.|Kannst du mir bitte das Salz geben?|Die "
    "Kinder spielen im Garten Fußball.|Nach der Arbeit trinke ich gern einen Kaffee.|Die "
    "Konferenz wurde auf nächste Woche verschoben.|Im Winter fahren wir oft in die Berge."
).split("|")
