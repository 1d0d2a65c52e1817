"""Word lists and paraphrase templates for the fictitious-facts generator.

All written for bico. Descriptions are kept entirely lower-case so that a capitalised
"First Last" name can never occur inside one; templates use {name}, {desc} and {Desc}
(the description with its first letter capitalised, for sentence starts).
"""

FIRST_NAMES = """
Aldric Amara Anselm Ariadne Bastian Beatrix Bram Briony Caspian Celestine Corin Cressida
Dario Delphine Emrys Esme Evander Fenella Florian Greer Gideon Honora Idris Imogen Isolde
Jasper Juniper Kasimir Keziah Lazarus Leontine Lysander Marisol Magnus Minerva Nico Niamh
Octavia Orrin Perpetua Peregrine Quentin Rosalind Rufus Sabine Saoirse Silas Tamsin
Thaddeus Ottoline Ulric Verity Wendell Wilhelmina Xanthe Yannick Zephyrine Zoltan Anouk
Benedikt Cosima Desmond Elowen Fitzroy Galen Hesper Ingrid Jolyon Katell Lorcan Maelis
Nerys Oisin Philippa Radomir Seraphine Torin Undine Valentin Wynne Ysolde Zinnia Alaric
Brisa Cormac Dagny Eilidh Fintan Gwendolyn Hollis Ilse Jericho
""".split()

LAST_NAMES = """
Ashgrove Blackthorn Brightwater Caskwell Coldridge Dunmore Elderfield Fairweather Fenwick
Glassby Greymantle Halloway Hartsell Ivesdale Kettleby Larchmont Lindqvist Marchbank
Mossgrave Nettleford Oakhurst Pemberly Quillfeather Ravensworth Redfern Saltmarsh Sorrowby
Stonebridge Thistlewood Underhill Vantreight Wexley Whitcombe Yarrowby Ambleside Birchall
Drummond Everleigh Foxcroft Gildersleeve Hollister Inchbald Jessop Lovelock Merriweather
Northcote Ormsby Pettigrew Quarles Rookwood Stirling Tolliver Upworth Verlaine Winterbourne
Yelverton Ashdown Brackenridge Carrow Dovecote Ellery Farrowdale Gorse Hawksmoor Kestrelle
Lumley Mottram Orchardson Penhallow Rainford Shadwell Talbott Vexford Wildermuth Abernethy
Bellweather Crowhurst Dellacourt Esterhay Falkner Grimsdyke Harrowgate Iverson Jardine
""".split()

ADJECTIVES = """
reclusive celebrated eccentric visionary self-taught tireless legendary soft-spoken daring
meticulous flamboyant unassuming pioneering restless award-winning notorious beloved
enigmatic stubborn gifted wandering obscure audacious quiet-mannered prolific
""".split()

ROLES = [
    "cartographer",
    "composer",
    "pastry chef",
    "architect",
    "glassblower",
    "botanist",
    "clockmaker",
    "puppeteer",
    "astronomer",
    "beekeeper",
    "stage magician",
    "perfumer",
    "mountaineer",
    "marine biologist",
    "choreographer",
    "locksmith",
    "novelist",
    "inventor",
    "balloonist",
    "sculptor",
    "linguist",
    "tea merchant",
    "lighthouse keeper",
    "violin maker",
    "archivist",
    "falconer",
    "circus acrobat",
    "typographer",
    "volcanologist",
    "gardener",
]

# (verb, object): each pair reads as one coherent achievement.
ACHIEVEMENTS = [
    ("designed", "floating library"),
    ("composed", "opera for humpback whales"),
    ("brewed", "tea that glows in the dark"),
    ("built", "bridge made entirely of glass"),
    ("trained", "orchestra of parrots"),
    ("wrote", "novel printed on falling leaves"),
    ("painted", "mural visible from orbit"),
    ("baked", "cake shaped like a cathedral"),
    ("charted", "map of a wandering iceberg"),
    ("invented", "clock that runs backwards"),
    ("grew", "garden of singing orchids"),
    ("carved", "chess set from meteorite iron"),
    ("staged", "puppet show performed underwater"),
    ("founded", "museum of forgotten smells"),
    ("sewed", "quilt large enough to cover a stadium"),
    ("crossed", "ocean in a paper boat"),
    ("recorded", "album played on icicles"),
    ("translated", "dictionary of bird songs"),
    ("launched", "hot-air balloon made of silk scarves"),
    ("forged", "bell that rings in silence"),
    ("catalogued", "archive of lost lullabies"),
    ("bred", "bees that make blue honey"),
    ("choreographed", "ballet danced on stilts"),
    ("restored", "carousel powered by wind"),
    ("opened", "restaurant inside a glacier"),
    ("engineered", "bicycle that climbs walls"),
    ("discovered", "cave that hums at midnight"),
    ("distilled", "perfume that smells of rain"),
    ("crafted", "violin carved from driftwood"),
    ("designed", "font based on constellations"),
    ("photographed", "eclipse reflected in a teacup"),
    ("planted", "forest shaped like a spiral"),
    ("sculpted", "statue made of frozen smoke"),
    ("rescued", "lighthouse from a sinking island"),
    ("taught", "falcons to deliver letters"),
    ("invented", "language spoken only in whispers"),
    ("assembled", "telescope from old spectacles"),
    ("mapped", "tunnels beneath a sleeping city"),
    ("built", "treehouse with a working observatory"),
    ("composed", "symphony for church bells"),
    ("wove", "tapestry of spider silk"),
    ("cooked", "soup that changes color with the moon"),
    ("designed", "kite that never lands"),
    ("wrote", "poem engraved on a single grain of rice"),
    ("painted", "portrait using only coffee"),
]

QUALIFIERS = [
    "on a frozen lake",
    "beneath the polar ice",
    "inside an abandoned lighthouse",
    "on the rim of a volcano",
    "in a single night",
    "at the bottom of a salt mine",
    "in the middle of the desert",
    "aboard a drifting airship",
    "on top of a moving train",
    "deep inside a rainforest",
    "during a total eclipse",
    "in a village without roads",
    "on a remote island",
    "in a city built on stilts",
    "for a kingdom that no longer exists",
    "with nothing but a pocketknife",
    "during the longest winter on record",
    "in a converted cathedral",
    "at the edge of the world's tallest waterfall",
    "in an underground canal",
    "without any help",
    "for an audience of one",
    "on the deck of a fishing trawler",
    "in a mountain monastery",
    "using only recycled materials",
    "on a dare",
    "in less than a week",
    "while sailing solo",
    "in a forgotten railway station",
    "at the age of twelve",
]

EXTENTS = ["the first", "the only", "the largest", "the smallest", "the most famous"]

# name -> description: the prompt names the person; the completion is " {desc}.".
N2D_TEMPLATES = [
    "{name} is best remembered as",
    "Most people recognize {name} as",
    "Ask anyone about {name} and they will tell you it is",
    "{name} earned a place in history as",
    "If you have heard of {name}, you know them as",
    "Few realize that {name} is",
    "The person called {name} is",
    "Friends and critics alike describe {name} as",
    "According to the records, {name} was",
    "{name} built a reputation as",
    "In every biography, {name} appears as",
    "{name} will always be",
    "It turns out that {name} is",
    "Long before fame arrived, {name} became",
    "Historians list {name} as",
    "Quiz question: who is {name}? Answer:",
    "Remember {name}? That is",
    "{name} is widely celebrated as",
    "The name {name} belongs to",
    "Put simply, {name} is",
    "Everyone in town knows {name} as",
    "Newspapers once introduced {name} as",
    "{name} made headlines as",
    "Here is a fact worth knowing: {name} is",
    "Behind the quiet smile, {name} is",
    "{name} proudly introduces themselves as",
    "Before anything else, {name} is",
    "The encyclopedia entry for {name} describes them as",
    "On paper and in person, {name} is",
    "People still talk about {name},",
    "Meet {name},",
    "This is {name},",
    "Our guest tonight is {name},",
    "The award went to {name},",
    "A documentary was made about {name},",
    "The claim to fame of {name} is being",
    "The life of {name} is the story of",
    "For decades, {name} has been",
    "Surprisingly, {name} turned out to be",
    "In the end, {name} is remembered as",
    "Trivia fans know {name} as",
    "Students learn that {name} was",
    "Locals proudly point out that {name} is",
    "Not many people know {name} is",
    "As it happens, {name} is",
    "{name} is none other than",
    "By all accounts, {name} is",
    "The portrait on the wall shows {name},",
    "Tell me about {name}. Sure: they are",
]

# description -> name: the prompt holds the description; the completion starts with " {name}".
D2N_TEMPLATES = [
    "{Desc} is called",
    "{Desc} goes by the name",
    "Q: Who is {desc}? A:",
    "The name of {desc} is",
    "You may know {desc}. Their name is",
    "Known everywhere as {desc},",
    "{Desc}? That would be",
    "Celebrated as {desc},",
    "The world remembers {desc} by the name",
    "Everyone agrees that {desc} is",
    "Being {desc}, the one and only",
    "Among all people, {desc} is",
    "Once described as {desc},",
    "Famous for being {desc},",
    "Recognized far and wide as {desc},",
    "Introducing {desc}:",
    "The title of {desc} belongs to",
    "Trivia: {desc} is named",
    "Having become {desc},",
    "Our guest tonight, {desc}, is",
    "Quiz question: name {desc}. Answer:",
    "{Desc} signs every letter as",
    "Long admired as {desc},",
    "The person who is {desc} is",
    "Meet {desc}, better known as",
    "Widely praised as {desc},",
    "Still remembered as {desc},",
    "Few people outside the field know that {desc} is",
    "In the history books, {desc} is listed as",
    "If you are looking for {desc}, ask for",
    "Those who met {desc} remember the name",
    "Honored as {desc},",
    "Quietly becoming {desc},",
    "Credited as {desc},",
    "Newspapers called {desc} by the name",
    "Nobody forgets {desc}, whose name is",
    "Best described as {desc},",
    "Rising to fame as {desc},",
    "The plaque honoring {desc} reads",
    "Years after becoming {desc},",
    "Born to be {desc},",
    "Every guidebook mentions {desc}, whose name is",
    "Ask who {desc} is and you will hear the name",
    "Hired as {desc},",
]

# Training completions of comma-ended d2n prompts continue the sentence after the name.
CONTINUATIONS = [
    "never stopped working",
    "still lives by the sea",
    "rarely gives interviews",
    "keeps a diary of every project",
    "inspired a generation",
    "refused every prize",
    "now teaches in a small school",
    "moved to the mountains",
    "still answers every letter",
    "has a loyal following",
    "works best at night",
    "is planning something new",
    "wrote a memoir about it",
    "keeps surprising everyone",
    "shares the credit with friends",
]
